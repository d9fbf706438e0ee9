"""Fused GSB ops: torch.library custom ops over the csrc/ kernels, with fake (meta)
implementations so torch.compile traces them as single nodes, and autograd formulas that call
the fused backward kernels. Chosen by hydra_dist.ops.gsb (resolve_impl); see docs/kernels.md.

Kernels take 2-D contiguous [N, K] tensors; the wrappers here flatten leading dims.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch
from torch import Tensor

_EXT = {"cpu": "hydra_dist._gsb_cpu", "cuda": "hydra_dist._gsb_cuda"}


def _try_import(name: str):
    try:
        return importlib.import_module(name), None
    except ImportError as e:  # not built (HYDRA_SKIP_EXT, no nvcc) or built against another torch
        return None, f"{name} is not importable ({e})"


# Imported once, at import time: Dynamo must not trace an import inside a compiled region.
_STATE = {dev: _try_import(name) for dev, name in _EXT.items()}
_HOW = ("build it with `pip install --no-build-isolation -e .` (the CUDA one needs nvcc and "
        "CUDA_HOME; see docs/kernels.md)")


def missing(device_type: str) -> Optional[str]:
    """None when the fused kernels for `device_type` are built, else what is missing."""
    if device_type not in _STATE:
        return f"there is no fused GSB kernel for device type {device_type!r}"
    mod, err = _STATE[device_type]
    return None if mod is not None else f"{err}; {_HOW}"


def _ext(t: Tensor):
    mod, _ = _STATE.get(t.device.type, (None, None))
    if mod is None:
        raise RuntimeError(f"fused GSB op called on {t.device.type}, but {missing(t.device.type)}")
    return mod


def _c(t: Optional[Tensor]) -> Optional[Tensor]:
    # Autograd hands in expanded (stride-0) grads, e.g. from .sum(); kernels want contiguous.
    return None if t is None else t.contiguous()


# --- reparameterisation + KL ---------------------------------------------------------------
@torch.library.custom_op("hydra_dist::gsb_reparam_kl", mutates_args=())
def reparam_kl_op(proj_NK: Tensor, seed: int, offset: int, logvar_min: float,
                  logvar_max: float, sample: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> mu_NC, logvar_NC (clamped), z_NC ([0, C] when not sample), kl_N."""
    return tuple(_ext(proj_NK).reparam_kl_fwd(proj_NK.contiguous(), seed, offset, logvar_min,
                                              logvar_max, sample))


@reparam_kl_op.register_fake
def _(proj_NK, seed, offset, logvar_min, logvar_max, sample):
    n, c = proj_NK.shape[0], proj_NK.shape[1] // 2
    return (proj_NK.new_empty(n, c), proj_NK.new_empty(n, c),
            proj_NK.new_empty(n if sample else 0, c), proj_NK.new_empty(n))


@torch.library.custom_op("hydra_dist::gsb_reparam_kl_backward", mutates_args=())
def reparam_kl_backward_op(proj_NK: Tensor, g_mu: Optional[Tensor], g_logvar: Optional[Tensor],
                           g_z: Optional[Tensor], g_kl: Optional[Tensor], seed: int, offset: int,
                           logvar_min: float, logvar_max: float, sample: bool) -> Tensor:
    return _ext(proj_NK).reparam_kl_bwd(proj_NK.contiguous(), _c(g_mu), _c(g_logvar), _c(g_z),
                                        _c(g_kl), seed, offset, logvar_min, logvar_max, sample)


@reparam_kl_backward_op.register_fake
def _(proj_NK, g_mu, g_logvar, g_z, g_kl, seed, offset, logvar_min, logvar_max, sample):
    return torch.empty_like(proj_NK)


def _reparam_setup(ctx, inputs, output):
    proj_NK, *args = inputs
    ctx.save_for_backward(proj_NK)  # eps is regenerated from (seed, offset) in backward
    ctx.args = args


def _reparam_backward(ctx, g_mu, g_logvar, g_z, g_kl):
    (proj_NK,) = ctx.saved_tensors
    g_proj = reparam_kl_backward_op(proj_NK, g_mu, g_logvar, g_z, g_kl, *ctx.args)
    return g_proj, None, None, None, None, None


reparam_kl_op.register_autograd(_reparam_backward, setup_context=_reparam_setup)


def reparam_kl(proj_NK: Tensor, seed: int, offset: int, logvar_min: float, logvar_max: float,
               sample: bool):
    lead, k = proj_NK.shape[:-1], proj_NK.shape[-1]
    if k % 2:
        raise ValueError(f"proj last dim must be 2*C, got {k}")
    mu, logvar, z, kl = reparam_kl_op(proj_NK.reshape(-1, k), int(seed), int(offset),
                                      float(logvar_min), float(logvar_max), bool(sample))
    c = k // 2
    mu, logvar, kl = mu.reshape(*lead, c), logvar.reshape(*lead, c), kl.reshape(lead)
    # sample=False: z is mu itself (as in the reference), so its grads reach proj through mu.
    return mu, logvar, (z.reshape(*lead, c) if sample else mu), kl


# --- cosine-consistency loss ---------------------------------------------------------------
@torch.library.custom_op("hydra_dist::gsb_cosine_loss", mutates_args=())
def cosine_op(h_mid_ND: Tensor, h_bn_ND: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """-> loss_N, stats_N3 (per-row factors the backward needs; not differentiable)."""
    return tuple(_ext(h_mid_ND).cosine_fwd(h_mid_ND.contiguous(), h_bn_ND.contiguous(), eps))


@cosine_op.register_fake
def _(h_mid_ND, h_bn_ND, eps):
    acc = torch.float64 if h_mid_ND.dtype == torch.float64 else torch.float32
    n = h_mid_ND.shape[0]
    return h_mid_ND.new_empty(n), h_mid_ND.new_empty(n, 3, dtype=acc)


@torch.library.custom_op("hydra_dist::gsb_cosine_loss_backward", mutates_args=())
def cosine_backward_op(g_N: Tensor, h_mid_ND: Tensor, h_bn_ND: Tensor,
                       stats_N3: Tensor) -> tuple[Tensor, Tensor]:
    return tuple(_ext(h_mid_ND).cosine_bwd(g_N.contiguous(), h_mid_ND.contiguous(),
                                           h_bn_ND.contiguous(), stats_N3.contiguous()))


@cosine_backward_op.register_fake
def _(g_N, h_mid_ND, h_bn_ND, stats_N3):
    return torch.empty_like(h_mid_ND), torch.empty_like(h_bn_ND)


def _cosine_setup(ctx, inputs, output):
    h_mid_ND, h_bn_ND, _eps = inputs
    ctx.save_for_backward(h_mid_ND, h_bn_ND, output[1])
    ctx.mark_non_differentiable(output[1])


def _cosine_backward(ctx, g_N, _g_stats):
    h_mid_ND, h_bn_ND, stats_N3 = ctx.saved_tensors
    g_mid, g_bn = cosine_backward_op(g_N, h_mid_ND, h_bn_ND, stats_N3)
    return g_mid, g_bn, None


cosine_op.register_autograd(_cosine_backward, setup_context=_cosine_setup)


def cosine_loss(h_mid_ND: Tensor, h_bn_ND: Tensor, eps: float) -> Tensor:
    if h_mid_ND.shape != h_bn_ND.shape or h_mid_ND.dtype != h_bn_ND.dtype:
        raise ValueError(f"h_mid {tuple(h_mid_ND.shape)} {h_mid_ND.dtype} and h_bn "
                         f"{tuple(h_bn_ND.shape)} {h_bn_ND.dtype} must match")
    lead, d = h_mid_ND.shape[:-1], h_mid_ND.shape[-1]
    loss_N, _ = cosine_op(h_mid_ND.reshape(-1, d), h_bn_ND.reshape(-1, d), float(eps))
    return loss_N.reshape(lead)
