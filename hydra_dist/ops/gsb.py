"""GSB ops (docs/design.md): reparameterisation + KL, and the cosine-consistency loss.

Interface used by hydra_dist.models.gsb (keep these signatures):
  gsb_reparam_kl(proj_NK, *, seed, offset, logvar_min, logvar_max, sample, impl) -> (mu, logvar, z, kl_N)
  gsb_cosine_loss(h_mid_ND, h_bn_ND, *, impl) -> loss_N
impl is "auto" | "fused" | "reference" (config model.gsb.kernel); resolve_impl decides which
runs and logs it once per process. This file holds the pure-PyTorch references; the custom
ops and autograd over csrc/ are in gsb_fused.py. See docs/kernels.md.
"""
from __future__ import annotations

import logging

import torch

from hydra_dist.ops import gsb_fused

log = logging.getLogger("hydra_dist.ops.gsb")

IMPLS = ("auto", "fused", "reference")
COS_EPS = 1e-8  # as torch.nn.functional.cosine_similarity's default
_logged: set = set()


def resolve_impl(kernel: str, device) -> str:
    """"fused" or "reference" for config value `kernel` on `device`. kernel="fused" without a
    built extension for that device is an error naming the missing module (no silent fallback)."""
    if kernel not in IMPLS:
        raise ValueError(f"model.gsb.kernel must be one of {IMPLS}, got {kernel!r}")
    dev = torch.device(device).type
    missing = gsb_fused.missing(dev)
    if kernel == "fused" and missing is not None:
        raise RuntimeError(f"model.gsb.kernel=fused on {dev}, but {missing}")
    impl = "reference" if kernel == "reference" or missing is not None else "fused"
    # Dynamo cannot trace logging; the eager call before compilation has logged already.
    if not torch.compiler.is_compiling() and (kernel, dev) not in _logged:
        _logged.add((kernel, dev))
        why = "" if impl == "fused" or kernel == "reference" else f" ({missing})"
        log.info("GSB ops on %s: %s implementation (model.gsb.kernel=%s)%s", dev, impl, kernel, why)
    return impl


# --- counter-based noise ------------------------------------------------------------------
# Same function as csrc/common/gsb_noise.h, written with torch ops in the same order so the
# fused kernels reproduce it bit for bit (why the float steps are restricted: see the header).
# 32-bit words live in int64 tensors; products are split in 16-bit halves so none overflows.
_M32, _M64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF
_F = float.fromhex
_LN2, _SQRT_HALF = _F("0x1.62e430p-1"), _F("0x1.6a09e6p-1")
_LOG_P = [_F("0x1.c71c72p-4"), _F("0x1.24924ap-3"), _F("0x1.99999ap-3"), _F("0x1.555556p-2"), 1.0]
_COS_P = [_F("-0x1.b6e250p+0"), _F("0x1.f9d38ap+2"), _F("-0x1.a6d1f2p+4"), _F("0x1.e1f506p+5"),
          _F("-0x1.55d3c8p+6"), _F("0x1.03c1f0p+6"), _F("-0x1.3bd3ccp+4"), 1.0]


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def noise_keys(seed: int, offset: int) -> tuple[int, int, int, int]:
    a = _splitmix64(_splitmix64(int(seed) & _M64) ^ (int(offset) & _M64))
    b = _splitmix64(a)
    return a & _M32, a >> 32, b & _M32, b >> 32


def _mul32(x, c: int):
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(x):
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _horner(x, coeffs):
    p = x * coeffs[0] + coeffs[1]
    for c in coeffs[2:]:
        p = x * p + c
    return p


def _log_u24(k):
    """ln(k * 2^-24) for odd int64 k in [1, 2^24)."""
    m, e = torch.frexp(k.to(torch.float32))
    small = m < _SQRT_HALF
    m, e = torch.where(small, m + m, m), torch.where(small, e - 1, e)
    s = (m - 1.0) / (m + 1.0)
    return (s + s) * _horner(s * s, _LOG_P) + (e - 24).to(torch.float32) * _LN2


def _cos_2pi_u24(k):
    a = (k.to(torch.float32) * 2.0 ** -24 - 0.5).abs()
    flip = a > 0.25
    b = torch.where(flip, 0.5 - a, a)
    p = _horner(b * b, _COS_P)
    return torch.where(flip, p, -p)


def gsb_noise(shape, seed: int, offset: int, device, dtype) -> torch.Tensor:
    """Standard normal noise, a pure function of (seed, offset, flat element index):
    reproducible across ranks, resumes and implementations."""
    k0, k1, k2, k3 = noise_keys(seed, offset)
    i = torch.arange(int(torch.Size(shape).numel()), device=device, dtype=torch.int64)
    lo, hi = i & _M32, i >> 32
    h1 = _mix32(_mix32(lo ^ k0) ^ hi ^ k1)
    h2 = _mix32(_mix32(lo ^ k2) ^ hi ^ k3)
    # torch's vectorised fp32 sqrt on CPU is not always correctly rounded (SLEEF, 0.5001 ulp);
    # an fp64 sqrt rounded to fp32 is (double rounding is innocuous for sqrt), as the kernels' are.
    r = torch.sqrt((-2.0 * _log_u24((h1 >> 9) * 2 + 1)).double()).float()
    return (r * _cos_2pi_u24((h2 >> 9) * 2 + 1)).reshape(shape).to(dtype)


# --- references -----------------------------------------------------------------------------
def reparam_kl_reference(proj_NK, seed: int, offset: int, logvar_min: float, logvar_max: float,
                         sample: bool = True):
    c = proj_NK.shape[-1] // 2
    mu, logvar = proj_NK[..., :c], proj_NK[..., c:].clamp(logvar_min, logvar_max)
    if sample:
        eps = gsb_noise(mu.shape, seed, offset, mu.device, mu.dtype)
        z = mu + eps * torch.exp(0.5 * logvar)
    else:
        z = mu
    # KL accumulated in fp32 whatever the compute dtype (the CUDA kernel does the same), then
    # returned in the input dtype like the kernel's output
    lv32, mu32 = logvar.float(), mu.float()
    kl = (-0.5 * (1 + lv32 - mu32.pow(2) - lv32.exp()).sum(-1)).to(proj_NK.dtype)
    return mu, logvar, z, kl


def cosine_loss_reference(h_mid_ND, h_bn_ND):
    # norms and dot product in fp32 (bf16 sums over D=1024 lose ~3 digits), returned in the
    # input dtype like the kernel
    return (1.0 - torch.nn.functional.cosine_similarity(h_mid_ND.float(), h_bn_ND.float(), dim=-1,
                                                        eps=COS_EPS)).to(h_mid_ND.dtype)


# --- public ops -----------------------------------------------------------------------------
def gsb_reparam_kl(proj_NK, *, seed: int, offset: int, logvar_min: float = -30.0,
                   logvar_max: float = 20.0, sample: bool = True, impl: str = "auto"):
    if resolve_impl(impl, proj_NK.device) == "fused":
        return gsb_fused.reparam_kl(proj_NK, seed, offset, logvar_min, logvar_max, sample)
    return reparam_kl_reference(proj_NK, seed, offset, logvar_min, logvar_max, sample)


def gsb_cosine_loss(h_mid_ND, h_bn_ND, *, impl: str = "auto"):
    if resolve_impl(impl, h_mid_ND.device) == "fused":
        return gsb_fused.cosine_loss(h_mid_ND, h_bn_ND, COS_EPS)
    return cosine_loss_reference(h_mid_ND, h_bn_ND)
