"""HYDRA-TOK's ViT halves (Gen-ViT and Sem-ViT): pre-norm blocks, bidirectional attention."""
from __future__ import annotations

import torch
from torch import nn

from hydra_dist.config.schema import ViTConfig

from .layers import GeluMLP, SelfAttention, scaled_std


class ViTBlock(nn.Module):
    def __init__(self, mp, v: ViTConfig, std: float, depth: int):
        super().__init__()
        out_std = scaled_std(std, depth)
        self.norm1 = nn.LayerNorm(v.hidden_size, eps=v.norm_eps)
        self.attn = SelfAttention(mp, v.hidden_size, v.num_heads, v.num_heads, std,
                                  qkv_bias=True, out_bias=True, out_std=out_std)
        self.norm2 = nn.LayerNorm(v.hidden_size, eps=v.norm_eps)
        self.mlp = GeluMLP(mp, v.hidden_size, v.mlp_size, v.hidden_size, std, out_std)

    def forward(self, x_BND):
        x_BND = x_BND + self.attn(self.norm1(x_BND))
        return x_BND + self.mlp(self.norm2(x_BND))


class ViTStack(nn.Module):
    """A run of ViT blocks; returns the last hidden state and, on request, every layer's."""

    def __init__(self, mp, v: ViTConfig, num_layers: int, std: float, total_depth: int):
        super().__init__()
        self.blocks = nn.ModuleList(ViTBlock(mp, v, std, total_depth) for _ in range(num_layers))
        self.checkpointing = False

    def forward(self, x_BND, return_all: bool = False):
        hidden = []
        for blk in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                x_BND = torch.utils.checkpoint.checkpoint(blk, x_BND, use_reentrant=False)
            else:
                x_BND = blk(x_BND)
            hidden.append(x_BND)
        return (x_BND, hidden) if return_all else x_BND


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> linear -> + learned positions."""

    def __init__(self, v: ViTConfig, std: float):
        super().__init__()
        self.p = v.patch_size
        n = (v.image_size // v.patch_size) ** 2
        self.proj = nn.Linear(3 * self.p * self.p, v.hidden_size)
        self.pos = nn.Parameter(torch.randn(1, n, v.hidden_size) * std)

    def forward(self, img_B3HW):
        B, C, H, W = img_B3HW.shape
        p = self.p
        x = img_B3HW.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
        x = x.reshape(B, (H // p) * (W // p), C * p * p)
        return self.proj(x) + self.pos
