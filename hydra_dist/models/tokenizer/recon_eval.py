"""Reconstruction: encode (mu, no noise) -> Euler ODE decode, and its metrics (PSNR, SSIM, rFID)
and side-by-side grids. Images are [-1, 1] tensors; metrics are computed on [0, 1]."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .decoder import euler_sample
from .model import HydraTok


@torch.no_grad()
def reconstruct(model: HydraTok, images_B3HW, steps: int, seed: int = 0):
    """Decode from the clean latent mu; the starting noise is fixed by `seed`."""
    dtype = model.patch.proj.weight.dtype
    x = images_B3HW.to(dtype)
    _, _, mu, _, _, _ = model.encode(x, sample=False)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x)
    return euler_sample(model.decoder, mu, noise, steps).clamp(-1, 1).float()


def psnr(a_B3HW, b_B3HW):
    """Per-image PSNR in dB, inputs in [-1, 1]."""
    mse = ((a_B3HW.float() - b_B3HW.float()) / 2).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


def ssim(a_B3HW, b_B3HW, win: int = 11, sigma: float = 1.5):
    """Per-image SSIM (Wang et al. 2004: Gaussian window 11 / 1.5, K1 0.01, K2 0.03, data
    range 1), per channel and averaged; the window shrinks to the image for small images."""
    a, b = (a_B3HW.float() + 1) / 2, (b_B3HW.float() + 1) / 2
    win = min(win, a.shape[-1], a.shape[-2])
    g = torch.exp(-((torch.arange(win) - (win - 1) / 2) ** 2) / (2 * sigma ** 2))
    g = (g / g.sum()).to(a)
    k = (g[:, None] * g[None]).expand(3, 1, win, win)

    def filt(x):
        return F.conv2d(x, k, groups=3)
    mu_a, mu_b = filt(a), filt(b)
    var_a, var_b = filt(a * a) - mu_a ** 2, filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(1, 2, 3))


def to_uint8(img_3HW) -> np.ndarray:
    return ((img_3HW.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def save_grid(originals, recons, path: str | Path, per_row: int = 8, scale: int = 1) -> Path:
    """Rows of pairs: original | reconstruction, side by side."""
    n, size = originals.shape[0], originals.shape[-1] * scale
    cols = min(per_row, n)
    rows = (n + cols - 1) // cols
    pad = max(2, size // 16)
    grid = Image.new("RGB", (cols * (2 * size + 2 * pad), rows * (size + pad)), (255, 255, 255))
    for i in range(n):
        r, c = divmod(i, cols)
        x0 = c * (2 * size + 2 * pad)
        for j, img in enumerate((originals[i], recons[i])):
            im = Image.fromarray(to_uint8(img)).resize((size, size), Image.NEAREST)
            grid.paste(im, (x0 + j * size, r * (size + pad)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


# --- rFID --------------------------------------------------------------------------------
class InceptionFeatures(torch.nn.Module):
    """torchvision Inception-v3 (architecture only) with weights from a file; 2048-d pool
    features on 299 px inputs. (Numbers are comparable only between runs with the same file.)"""

    def __init__(self, weights: str):
        super().__init__()
        from torchvision.models import inception_v3
        self.net = inception_v3(weights=None, aux_logits=False, init_weights=False)
        sd = torch.load(weights, map_location="cpu", weights_only=True)
        sd = {k: v for k, v in sd.items() if not k.startswith("AuxLogits.")}
        self.net.load_state_dict(sd, strict=True)
        self.net.fc = torch.nn.Identity()
        self.eval()

    @torch.no_grad()
    def forward(self, img_B3HW):
        x = F.interpolate((img_B3HW.float() + 1) / 2, size=(299, 299), mode="bilinear",
                          align_corners=False)
        mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return self.net((x - mean) / std).double()


def frechet_distance(feat_a, feat_b) -> float:
    from scipy import linalg
    a, b = feat_a.double().numpy(), feat_b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    covmean = (covmean[0] if isinstance(covmean, tuple) else covmean).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))
