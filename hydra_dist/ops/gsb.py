"""GSB ops (DESIGN.md 1): reparameterisation + KL, and the cosine-consistency loss.

Interface used by hydra_dist.models.gsb (keep these signatures):
  gsb_reparam_kl(proj_NK, *, seed, offset, logvar_min, logvar_max, sample, impl) -> (mu, logvar, z, kl_N)
  gsb_cosine_loss(h_mid_ND, h_bn_ND, *, impl) -> loss_N
impl is "auto" | "fused" | "reference" (config model.gsb.kernel).
"""
from __future__ import annotations

import torch


def gsb_noise(shape, seed: int, offset: int, device, dtype) -> torch.Tensor:
    """Standard normal noise that depends only on (seed, offset): reproducible across ranks
    and resumes."""
    g = torch.Generator(device="cpu")
    g.manual_seed((int(seed) * 1_000_003 + int(offset)) % (2 ** 63 - 1))
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)


def reparam_kl_reference(proj_NK, seed: int, offset: int, logvar_min: float, logvar_max: float,
                         sample: bool = True):
    c = proj_NK.shape[-1] // 2
    mu, logvar = proj_NK[..., :c], proj_NK[..., c:].clamp(logvar_min, logvar_max)
    if sample:
        eps = gsb_noise(mu.shape, seed, offset, mu.device, mu.dtype)
        z = mu + eps * torch.exp(0.5 * logvar)
    else:
        z = mu
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)
    return mu, logvar, z, kl


def cosine_loss_reference(h_mid_ND, h_bn_ND):
    return 1.0 - torch.nn.functional.cosine_similarity(h_mid_ND, h_bn_ND, dim=-1, eps=1e-8)


def gsb_reparam_kl(proj_NK, *, seed: int, offset: int, logvar_min: float = -30.0,
                   logvar_max: float = 20.0, sample: bool = True, impl: str = "auto"):
    return reparam_kl_reference(proj_NK, seed, offset, logvar_min, logvar_max, sample)


def gsb_cosine_loss(h_mid_ND, h_bn_ND, *, impl: str = "auto"):
    return cosine_loss_reference(h_mid_ND, h_bn_ND)
