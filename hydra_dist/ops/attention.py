"""Attention for HYDRA's mixed masks: text causal, each image's tokens bidirectional.

The mask is described by per-token metadata, not by a dense tensor, so packed sequences of
any layout share one definition:
  segment_ids [B,S]: sample index inside the packed row (0 = padding)
  image_ids   [B,S]: image block index inside the row (0 = text)
Reference path: a dense boolean mask + scaled_dot_product_attention (exact, any device).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
    """mask: None (all tokens see each other, e.g. inside a ViT) or a bool [B,1,S,S]."""
    if k_BHSd.shape[1] != q_BHSd.shape[1]:  # grouped-query attention
        rep = q_BHSd.shape[1] // k_BHSd.shape[1]
        k_BHSd = k_BHSd.repeat_interleave(rep, dim=1)
        v_BHSd = v_BHSd.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q_BHSd, k_BHSd, v_BHSd, attn_mask=mask)
