"""PNG artifacts: image grids of samples and the loss curve of a run."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

DEFAULT_CURVE_KEYS = ("loss", "ntp_loss", "fm_loss")


def to_uint8_NCHW(images: Any) -> np.ndarray:
    """Accept a torch tensor or array, NCHW or CHW, float in [-1, 1] or uint8."""
    if hasattr(images, "detach"):  # torch, without importing it here
        images = images.detach().float().cpu().numpy() if images.dtype.is_floating_point \
            else images.detach().cpu().numpy()
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4):
        raise ValueError(f"expected images as NCHW or CHW with 1, 3 or 4 channels, got {x.shape}")
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"expected float images in [-1, 1] or uint8, got dtype {x.dtype}")
    # Model outputs overshoot [-1, 1] a little; clipping is the honest display of that.
    return np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def image_grid(images: Any, nrow: Optional[int] = None, pad: int = 2):
    """A PIL image with the N images laid out row by row, `nrow` per row."""
    from PIL import Image
    x = to_uint8_NCHW(images)
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y0:y0 + h, x0:x0 + w] = x[i].transpose(1, 2, 0)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
    return Image.fromarray(grid[..., 0] if c == 1 else grid, mode=mode)


def to_pil(image: Any):
    """One image: PIL passes through; arrays as HWC/CHW/HW, float [-1, 1] or uint8."""
    from PIL import Image
    if isinstance(image, Image.Image):
        return image
    if hasattr(image, "detach"):
        image = image.detach().float().cpu().numpy() if image.dtype.is_floating_point \
            else image.detach().cpu().numpy()
    x = np.asarray(image)
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 3 and x.shape[-1] in (1, 3, 4) and x.shape[0] not in (1, 3, 4):
        x = x.transpose(2, 0, 1)  # HWC -> CHW
    return image_grid(x[None], nrow=1, pad=0)


def read_metrics_jsonl(path: Path) -> List[Dict[str, Any]]:
    rows = []
    with Path(path).open() as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def plot_loss_curve(metrics_jsonl: Path, out_png: Path,
                    keys: Sequence[str] = DEFAULT_CURVE_KEYS) -> List[str]:
    """Plot the given keys against `step`; returns the keys that were present."""
    import matplotlib
    matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot
    import matplotlib.pyplot as plt

    rows = read_metrics_jsonl(metrics_jsonl)
    present = [k for k in keys if any(k in r for r in rows)]
    if not present:
        raise ValueError(f"{metrics_jsonl}: none of {list(keys)} found in its rows")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for k in present:
        pts = [(r["step"], r[k]) for r in rows if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(Path(metrics_jsonl).parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return present
