"""Attention for HYDRA's mixed masks: text causal, each image's tokens bidirectional.

The mask is described by per-token metadata, not by a dense tensor, so packed sequences of
any layout share one definition:
  segment_ids [B,S]: sample index inside the packed row (0 = padding)
  image_ids   [B,S]: image block index inside the row (0 = text)
Reference path: a dense boolean mask + scaled_dot_product_attention (exact, any device).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .varlen import VarlenPlan, flash_attn_varlen_emulated, plan_varlen, varlen_attention

log = logging.getLogger(__name__)
_LOGGED: set = set()


def flash_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


HALF = (torch.bfloat16, torch.float16)


def resolve_attention(kind: str, dtype: torch.dtype = torch.bfloat16) -> str:
    """model.attention and the compute dtype -> the path that runs: 'flash', 'emulated' (the
    planner on the CPU emulation, for tests) or 'reference'. flash-attn takes fp16/bf16 only,
    so `auto` under fp32 is the reference path; asking for flash without flash-attn, or under
    fp32, is an error."""
    if kind == "flash" and not flash_available():
        raise RuntimeError("model.attention=flash but flash-attn is not installed or CUDA is "
                           "absent (pip install '.[gpu]' on a GPU node)")
    if kind == "flash" and dtype not in HALF:
        raise RuntimeError(f"model.attention=flash computes in bf16/fp16 but the model runs in "
                           f"{dtype}: set parallel.precision=bf16 or model.attention=auto")
    if kind == "auto":
        path = "flash" if flash_available() and dtype in HALF else "reference"
    else:
        path = kind
    if path not in _LOGGED:
        _LOGGED.add(path)
        # the trainer states it once with the other fast paths (hydra_dist.logs.fast_paths_line)
        log.debug("attention path: %s (model.attention=%s)", path, kind)
    return path


def make_mask(segment_ids_BS, image_ids_BS, path: str):
    """What SelfAttention receives: a varlen plan on the fast paths, a dense mask otherwise."""
    if path in ("flash", "emulated"):
        return plan_varlen(segment_ids_BS, image_ids_BS)
    return build_mask(segment_ids_BS, image_ids_BS)


def build_mask(segment_ids_BS: torch.Tensor, image_ids_BS: torch.Tensor) -> torch.Tensor:
    """Boolean [B,1,S,S] mask, True = may attend."""
    S = segment_ids_BS.shape[1]
    idx = torch.arange(S, device=segment_ids_BS.device)
    causal = idx[None, :, None] >= idx[None, None, :]
    seg_q, seg_k = segment_ids_BS[:, :, None], segment_ids_BS[:, None, :]
    img_q, img_k = image_ids_BS[:, :, None], image_ids_BS[:, None, :]
    same_image = (img_q == img_k) & (img_q > 0)
    allowed = (seg_q == seg_k) & (seg_k > 0) & (causal | same_image)
    # A padding query sees only itself, so its softmax is defined (its output is unused).
    allowed |= torch.eye(S, dtype=torch.bool, device=allowed.device)[None]
    return allowed[:, None]


def attention(q_BHSd, k_BHSd, v_BHSd, mask=None):
    """mask: None (all tokens see each other, e.g. inside a ViT), a bool [B,1,S,S], or a
    VarlenPlan (flash-attn varlen, or its emulation on CPU)."""
    if isinstance(mask, VarlenPlan):
        if q_BHSd.is_cuda:
            from flash_attn import flash_attn_varlen_func as kernel
        else:
            kernel = flash_attn_varlen_emulated
        return varlen_attention(q_BHSd, k_BHSd, v_BHSd, mask, kernel)
    if k_BHSd.shape[1] != q_BHSd.shape[1]:  # grouped-query attention
        rep = q_BHSd.shape[1] // k_BHSd.shape[1]
        k_BHSd = k_BHSd.repeat_interleave(rep, dim=1)
        v_BHSd = v_BHSd.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q_BHSd, k_BHSd, v_BHSd, attn_mask=mask)
