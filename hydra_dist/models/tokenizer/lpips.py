"""LPIPS (Zhang et al. 2018), built here so no weight is ever downloaded.

Trunk: torchvision's VGG16 or AlexNet `features` (architecture only); weights from a
torchvision state dict file. Linear layers: the `lpips` package's v0.1 file (keys
lin{i}.model.1.weight, 1x1 convs without bias). Distance, as the reference implementation:
  d(x, y) = sum_l mean_hw( w_l . (n(f_l(x)) - n(f_l(y)))^2 ),  n = unit norm over channels,
on inputs in [-1, 1] shifted and scaled per channel first.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# (ReLU outputs tapped in `features`, their channels)
NETS = {"vgg": ((3, 8, 15, 22, 29), (64, 128, 256, 512, 512)),
        "alex": ((1, 4, 7, 9, 11), (64, 192, 384, 256, 256))}
# Smallest square input for which every layer up to the last tap has an output (VGG: four 2x2
# pools; AlexNet: the stride-4 conv and two 3x3/2 pools), as min_input_size() derives it from
# the trunk. Only smaller images are upsampled (bilinear) first: the reference implementation
# runs the trunk on the image as given, and upsampling anything that runs anyway changes the
# distance (14% at 48 px when AlexNet's floor was taken as 64).
MIN_SIZE = {"vgg": 16, "alex": 31}
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def build_trunk(net: str) -> nn.Sequential:
    if net == "vgg":
        from torchvision.models.vgg import cfgs, make_layers
        return make_layers(cfgs["D"], batch_norm=False)   # == vgg16().features
    if net == "alex":
        from torchvision.models import alexnet
        return alexnet(weights=None).features
    raise ValueError(f"tokenizer.lpips.net: unknown net {net!r} (vgg or alex)")


def min_input_size(features: nn.Sequential, last_tap: int) -> int:
    """The smallest side h for which each conv / max-pool up to `last_tap` yields >= 1 output
    (floor((h + 2p - d(k - 1) - 1) / s) + 1, torch's formula without ceil_mode)."""
    def side(h: int) -> int:
        for i, layer in enumerate(features):
            if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
                k, st, p, d = (v if isinstance(v, int) else v[0] for v in
                               (layer.kernel_size, layer.stride, layer.padding, layer.dilation))
                h = (h + 2 * p - d * (k - 1) - 1) // st + 1
                if h < 1:
                    return 0
            if i == last_tap:
                break
        return h
    h = 1
    while side(h) < 1:
        h += 1
    return h


def _load(path: str, what: str) -> dict:
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"{what}: weight file not found: {path!r}")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


class LPIPS(nn.Module):
    def __init__(self, net: str, trunk_weights: str, lin_weights: str):
        super().__init__()
        self.features = build_trunk(net)
        self.taps, chans = NETS[net]
        self.min_size = MIN_SIZE[net]
        trunk = _load(trunk_weights, "tokenizer.lpips.trunk_weights")
        feats = {k[len("features."):]: v for k, v in trunk.items() if k.startswith("features.")}
        self.features.load_state_dict(feats or trunk, strict=True)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in chans)
        lin = _load(lin_weights, "tokenizer.lpips.lin_weights")
        for i, conv in enumerate(self.lins):
            key = f"lin{i}.model.1.weight"
            if key not in lin:
                raise KeyError(f"tokenizer.lpips.lin_weights: {lin_weights} has no {key}")
            conv.weight.data.copy_(lin[key])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def taps_of(self, x_B3HW):
        if min(x_B3HW.shape[-2:]) < self.min_size:
            x_B3HW = F.interpolate(x_B3HW, size=(self.min_size, self.min_size), mode="bilinear",
                                   align_corners=False)
        h, out = (x_B3HW - self.shift) / self.scale, []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
            if i == self.taps[-1]:
                break
        return out

    def forward(self, x_B3HW, y_B3HW):
        """Per-image distance [B]; gradients flow to the inputs, never to the weights."""
        total = 0.0
        for lin, fx, fy in zip(self.lins, self.taps_of(x_B3HW), self.taps_of(y_B3HW)):
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((nx - ny) ** 2).mean(dim=(2, 3))
        return total.view(-1)
