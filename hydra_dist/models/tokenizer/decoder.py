"""Pixel flow decoder: v_theta(x_t, t, latent) -> velocity of noisy pixels, and its Euler sampler.

Rectified flow on pixels: x_t = (1 - t) x + t eps, target v = eps - x, so the clean image
predicted at any t is x_hat = x_t - t v. The decoder is a DiT-style transformer on the ViT's
patch grid: tokens = patchify(x_t) + W_c latent + positions; the timestep modulates every block
(AdaLN). Attention and MLP are megatron TP layers; modulation and pixel in/out stay replicated.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hydra_dist.config.schema import ViTConfig
from hydra_dist.config.tokenizer_schema import DecoderConfig

from ..heads import TimeEmbed
from ..layers import GeluMLP, SelfAttention, scaled_std


def patchify(img_B3HW, p: int):
    B, C, H, W = img_B3HW.shape
    x = img_B3HW.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(x_BNK, p: int, size: int):
    B, g = x_BNK.shape[0], size // p
    x = x_BNK.reshape(B, g, g, 3, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, 3, size, size)


def modulate(x_BND, shift_B1D, scale_B1D):
    return x_BND * (1 + scale_B1D) + shift_B1D


class DecoderBlock(nn.Module):
    def __init__(self, mp, d: DecoderConfig, std: float):
        super().__init__()
        D, out_std = d.hidden_size, scaled_std(std, d.num_layers)
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(mp, D, d.num_heads, d.num_heads, std, qkv_bias=True,
                                  out_bias=True, out_std=out_std)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mlp = GeluMLP(mp, D, d.mlp_size, D, std, out_std)
        # Small random (not zero) modulation: every weight gets a gradient from step one.
        self.mod = nn.Linear(D, 6 * D)
        nn.init.normal_(self.mod.weight, std=std)
        nn.init.zeros_(self.mod.bias)

    def forward(self, x_BND, c_BD):
        s1, sc1, g1, s2, sc2, g2 = self.mod(F.silu(c_BD))[:, None].chunk(6, dim=-1)
        x_BND = x_BND + (1 + g1) * self.attn(modulate(self.norm1(x_BND), s1, sc1))
        return x_BND + (1 + g2) * self.mlp(modulate(self.norm2(x_BND), s2, sc2))


class PixelFlowDecoder(nn.Module):
    def __init__(self, mp, d: DecoderConfig, v: ViTConfig, latent_channels: int, std: float):
        super().__init__()
        self.p, self.size = v.patch_size, v.image_size
        n, D, k = (v.image_size // v.patch_size) ** 2, d.hidden_size, 3 * v.patch_size ** 2
        self.inp = nn.Linear(k, D)
        self.cond = nn.Linear(latent_channels, D)
        self.pos = nn.Parameter(torch.randn(1, n, D) * std)
        self.time = TimeEmbed(d.time_embed_dim, D)
        self.blocks = nn.ModuleList(DecoderBlock(mp, d, std) for _ in range(d.num_layers))
        self.final_norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.final_mod = nn.Linear(D, 2 * D)
        self.out = nn.Linear(D, k)
        for lin in (self.final_mod, self.out):
            nn.init.normal_(lin.weight, std=std)
            nn.init.zeros_(lin.bias)
        self.checkpointing = False

    def forward(self, x_t_B3HW, t_B, latent_BNC):
        c = self.time(t_B)
        x = self.inp(patchify(x_t_B3HW, self.p)) + self.cond(latent_BNC) + self.pos
        for blk in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, c, use_reentrant=False)
            else:
                x = blk(x, c)
        shift, scale = self.final_mod(F.silu(c))[:, None].chunk(2, dim=-1)
        return unpatchify(self.out(modulate(self.final_norm(x), shift, scale)), self.p, self.size)


@torch.no_grad()
def euler_sample(decoder: PixelFlowDecoder, latent_BNC, noise_B3HW, steps: int):
    """Integrate dx/dt = v from t=1 (noise) to t=0 (image) in `steps` uniform Euler steps."""
    x = noise_B3HW
    ts = torch.linspace(1.0, 0.0, steps + 1, device=x.device, dtype=torch.float32)
    for i in range(steps):
        t = ts[i].expand(x.shape[0]).to(x.dtype)
        x = x + (ts[i + 1] - ts[i]).to(x.dtype) * decoder(x, t, latent_BNC)
    return x
