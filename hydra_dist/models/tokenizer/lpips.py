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
# Smallest input the trunk's pooling allows; smaller images are upsampled (bilinear) first.
MIN_SIZE = {"vgg": 16, "alex": 64}
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
