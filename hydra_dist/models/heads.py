"""Projector (Sem-ViT -> LLM tokens) and the flow head (LLM -> latent velocity, AdaLN-Zero)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import GeluMLP


def merge_patches(x_BND, merge: int):
    """Merge merge x merge neighbouring patches: [B, g*g, D] -> [B, (g/m)^2, m*m*D]."""
    B, N, D = x_BND.shape
    g, m = int(math.isqrt(N)), merge
    x = x_BND.reshape(B, g // m, m, g // m, m, D).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (g // m) ** 2, m * m * D)


def unmerge_patches(x_BMK, merge: int, dim: int):
    """Inverse of merge_patches."""
    B, M, _ = x_BMK.shape
    gm, m = int(math.isqrt(M)), merge
    x = x_BMK.reshape(B, gm, gm, m, m, dim).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (gm * m) ** 2, dim)


class Projector(nn.Module):
    """2x2 patch merge then an MLP into the LLM width."""

    def __init__(self, mp, vit_dim: int, llm_dim: int, merge: int, std: float):
        super().__init__()
        self.merge = merge
        self.norm = nn.LayerNorm(vit_dim * merge * merge)
        self.mlp = GeluMLP(mp, vit_dim * merge * merge, llm_dim, llm_dim, std, std)

    def forward(self, x_BND):
        return self.mlp(self.norm(merge_patches(x_BND, self.merge)))


def timestep_embedding(t_B, dim: int, max_period: float = 10000.0):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t_B.device) / half)
    args = (t_B.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbed(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t_B):
        # the sinusoids are built in fp32 (exact phases for t*1000), then meet the Linear in its
        # own dtype: under bf16 the Linear is bf16 and a fp32 input would fail the matmul
        return self.mlp(timestep_embedding(t_B, self.dim).to(self.mlp[0].weight.dtype))


class AdaLNBlock(nn.Module):
    """x + gate(t) * MLP(LN(x) * (1 + scale(t)) + shift(t)); modulation zero-initialised so each
    block starts as the identity (AdaLN-Zero)."""

    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))
        self.mod = nn.Linear(hidden, 3 * hidden)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, x_BMH, c_BH):
        shift, scale, gate = self.mod(F.silu(c_BH))[:, None].chunk(3, dim=-1)
        return x_BMH + gate * self.mlp(self.norm(x_BMH) * (1 + scale) + shift)


class FlowHead(nn.Module):
    """Predicts the rectified-flow velocity of the merged latent (merge^2 * C per LLM token) from
    the LLM's last hidden state and, with latent_skip, the merged noisy latent x_t itself."""

    def __init__(self, llm_dim: int, out_dim: int, layers: int, ffn: int, time_dim: int,
                 latent_skip: bool = False):
        super().__init__()
        self.inp = nn.Linear(llm_dim, llm_dim)
        self.latent_in = nn.Linear(out_dim, llm_dim) if latent_skip else None
        self.time = TimeEmbed(time_dim, llm_dim)
        self.blocks = nn.ModuleList(AdaLNBlock(llm_dim, ffn) for _ in range(layers))
        self.final_norm = nn.LayerNorm(llm_dim, elementwise_affine=False, eps=1e-6)
        self.final_mod = nn.Linear(llm_dim, 2 * llm_dim)
        self.out = nn.Linear(llm_dim, out_dim)
        for lin in (self.final_mod, self.out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, h_BMH, t_B, x_t_BMK=None):
        """x_t_BMK: the merged noisy latent [B, M, merge^2 C]; required with latent_skip."""
        c = self.time(t_B)
        x = self.inp(h_BMH)
        if self.latent_in is not None:
            if x_t_BMK is None:
                raise ValueError("FlowHead(latent_skip=True) needs the noisy latent x_t")
            x = x + self.latent_in(x_t_BMK.to(x.dtype))
        for blk in self.blocks:
            x = blk(x, c)
        shift, scale = self.final_mod(F.silu(c))[:, None].chunk(2, dim=-1)
        return self.out(self.final_norm(x) * (1 + scale) + shift)
