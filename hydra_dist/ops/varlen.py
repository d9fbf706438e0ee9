"""HYDRA's mixed mask on flash-attn's variable-length kernels.

flash_attn_varlen_func runs many independent (query range, key range) problems in one call,
each either fully causal (bottom-right aligned when there are more keys than queries) or fully
bidirectional. The planner splits every sample of a packed row into chunks:
  a text run      -> queries [c0, c1), keys [sample start, c1), causal
  an image block  -> queries [c0, c1), keys [sample start, c1), bidirectional
and groups them into one causal and one bidirectional call. Keys of a sample's prefix are read
once per chunk (a few chunks per sample), which is what buys flash-attn's speed for this mask.
Padding queries are not computed (their output is 0; no loss reads them).
On CPU, `flash_attn_varlen_emulated` implements the same call interface exactly, so the
planner is tested here against the dense-mask reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F


@dataclass
class VarlenCall:
    q_index: torch.Tensor      # [Tq] flat indices into B*S
    k_index: torch.Tensor      # [Tk]
    cu_seqlens_q: torch.Tensor  # [n+1] int32
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    causal: bool


@dataclass
class VarlenPlan:
    calls: List[VarlenCall]
    total_tokens: int           # B*S


def _chunks(seg: list, img: list):
    """Yield (q0, q1, k0, causal) for one row."""
    S, i = len(seg), 0
    while i < S:
        if seg[i] == 0:
            i += 1
            continue
        start = i
        while i < S and seg[i] == seg[start]:
            i += 1
        j = start
        while j < i:  # split the sample [start, i) into text runs and image blocks
            k = j
            while k < i and img[k] == img[j]:
                k += 1
            yield j, k, start, img[j] == 0
            j = k


def plan_varlen(segment_ids_BS: torch.Tensor, image_ids_BS: torch.Tensor) -> VarlenPlan:
    B, S = segment_ids_BS.shape
    seg, img = segment_ids_BS.tolist(), image_ids_BS.tolist()
    groups = {True: ([], [], [0], [0]), False: ([], [], [0], [0])}
    for b in range(B):
        for q0, q1, k0, causal in _chunks(seg[b], img[b]):
            qi, ki, cq, ck = groups[causal]
            qi.extend(range(b * S + q0, b * S + q1))
            ki.extend(range(b * S + k0, b * S + q1))
            cq.append(cq[-1] + q1 - q0)
            ck.append(ck[-1] + q1 - k0)
    calls = []
    dev = segment_ids_BS.device
    for causal, (qi, ki, cq, ck) in groups.items():
        if not qi:
            continue
        lq = [b - a for a, b in zip(cq, cq[1:])]
        lk = [b - a for a, b in zip(ck, ck[1:])]
        calls.append(VarlenCall(torch.tensor(qi, device=dev), torch.tensor(ki, device=dev),
                                torch.tensor(cq, dtype=torch.int32, device=dev),
                                torch.tensor(ck, dtype=torch.int32, device=dev),
                                max(lq), max(lk), causal))
    return VarlenPlan(calls, B * S)


def flash_attn_varlen_emulated(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                               dropout_p=0.0, softmax_scale=None, causal=False):
    """flash_attn_varlen_func's interface and semantics in plain PyTorch: q [Tq,H,d],
    k/v [Tk,Hkv,d]; causal is aligned to the bottom-right corner of each (q, k) block."""
    out = torch.empty_like(q)
    rep = q.shape[1] // k.shape[1]
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(cq) - 1):
        qs = q[cq[i]:cq[i + 1]].transpose(0, 1)               # [H, lq, d]
        ks = k[ck[i]:ck[i + 1]].transpose(0, 1).repeat_interleave(rep, 0)
        vs = v[ck[i]:ck[i + 1]].transpose(0, 1).repeat_interleave(rep, 0)
        mask = None
        if causal:
            lq, lk = qs.shape[1], ks.shape[1]
            mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=softmax_scale)
        out[cq[i]:cq[i + 1]] = o.transpose(0, 1)
    return out


def varlen_attention(q_BHSd, k_BHSd, v_BHSd, plan: VarlenPlan, kernel):
    """Run a plan with `kernel` (flash_attn_varlen_func or the emulation); returns [B,H,S,d]."""
    B, H, S, d = q_BHSd.shape
    q = q_BHSd.transpose(1, 2).reshape(B * S, H, d)
    k = k_BHSd.transpose(1, 2).reshape(B * S, k_BHSd.shape[1], d)
    v = v_BHSd.transpose(1, 2).reshape(B * S, v_BHSd.shape[1], d)
    out = q.new_zeros(B * S, H, d)
    for c in plan.calls:
        o = kernel(q[c.q_index], k[c.k_index], v[c.k_index], c.cu_seqlens_q, c.cu_seqlens_k,
                   c.max_seqlen_q, c.max_seqlen_k, causal=c.causal)
        out = out.index_copy(0, c.q_index, o)
    return out.reshape(B, S, H, d).transpose(1, 2)
