"""Patch discriminator (PatchGAN, Isola et al.) and the GAN losses.

GroupNorm instead of BatchNorm: batch statistics would differ per DP rank. The discriminator is
replicated (a plain module with a torch optimizer; the trainer averages its grads over DP).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from hydra_dist.config.tokenizer_schema import GANConfig


class PatchDiscriminator(nn.Module):
    def __init__(self, g: GANConfig):
        super().__init__()
        ch = g.channels
        layers = [nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        c_prev = ch
        for n in range(1, g.num_layers):
            c = ch * min(2 ** n, 8)
            layers += [nn.Conv2d(c_prev, c, 4, 2, 1, bias=False), nn.GroupNorm(min(32, c), c),
                       nn.LeakyReLU(0.2)]
            c_prev = c
        layers += [nn.Conv2d(c_prev, 1, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, img_B3HW):
        """Patch logits [B,1,h,w]."""
        return self.net(img_B3HW)


def d_loss(kind: str, logits_real, logits_fake):
    """Discriminator loss (0.5 * (real term + fake term), as taming-transformers)."""
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def g_loss(kind: str, logits_fake):
    """Generator (decoder) adversarial loss."""
    if kind == "hinge":
        return -logits_fake.mean()
    return F.softplus(-logits_fake).mean()
