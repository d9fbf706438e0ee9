"""Transformer building blocks on megatron-core tensor-parallel layers.

Linear layers are megatron's ColumnParallelLinear / RowParallelLinear, so the same module
runs at TP=1 and TP=N with identical initial weights (megatron initialises the full master
weight on CPU and slices it). Norms and small projections stay replicated.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.model_parallel_config import ModelParallelConfig
from torch import nn

from hydra_dist.ops.attention import attention


def mp_config(params_dtype=torch.float32) -> ModelParallelConfig:
    # use_cpu_initialization: weights are built on CPU from one master tensor, which is what
    # makes TP=N start from the same weights as TP=1 (and avoids the CUDA RNG tracker).
    return ModelParallelConfig(
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        use_cpu_initialization=True, perform_initialization=True, params_dtype=params_dtype)


def normal_init(std: float):
    return lambda w: nn.init.normal_(w, mean=0.0, std=std)


def col_linear(cfg: ModelParallelConfig, d_in: int, d_out: int, std: float, bias: bool):
    return tensor_parallel.ColumnParallelLinear(
        d_in, d_out, config=cfg, init_method=normal_init(std), bias=bias, gather_output=False,
        skip_bias_add=False)


def row_linear(cfg: ModelParallelConfig, d_in: int, d_out: int, std: float, bias: bool):
    return tensor_parallel.RowParallelLinear(
        d_in, d_out, config=cfg, init_method=normal_init(std), bias=bias, input_is_parallel=True,
        skip_bias_add=False)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(position_ids_BS, head_dim: int, theta: float, dtype):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32,
                                        device=position_ids_BS.device) / head_dim))
    freqs = position_ids_BS.float()[..., None] * inv  # [B,S,hd/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]  # [B,1,S,hd]


def apply_rope(x_BHSd, cos, sin):
    # Qwen2 / HF convention: rotate halves, so imported HF weights need no permutation.
    half = x_BHSd.shape[-1] // 2
    x1, x2 = x_BHSd[..., :half], x_BHSd[..., half:]
    return x_BHSd * cos + torch.cat([-x2, x1], dim=-1) * sin


class SelfAttention(nn.Module):
    """Multi-head / grouped-query attention with TP-sharded heads.

    Q, K and V are separate column-parallel layers so that head sharding is a plain split
    for GQA as well (a fused QKV would need an interleaved layout to shard correctly).
    """

    def __init__(self, cfg: ModelParallelConfig, hidden: int, heads: int, kv_heads: int,
                 std: float, qkv_bias: bool, out_bias: bool, out_std: float):
        super().__init__()
        tp = parallel_state.get_tensor_model_parallel_world_size()
        self.head_dim = hidden // heads
        self.local_heads, self.local_kv = heads // tp, kv_heads // tp
        self.q = col_linear(cfg, hidden, heads * self.head_dim, std, qkv_bias)
        self.k = col_linear(cfg, hidden, kv_heads * self.head_dim, std, qkv_bias)
        self.v = col_linear(cfg, hidden, kv_heads * self.head_dim, std, qkv_bias)
        self.o = row_linear(cfg, heads * self.head_dim, hidden, out_std, out_bias)

    def forward(self, x_BSD, mask=None, rope=None, kv=None):
        """kv: a LayerKV for inference; new keys/values are appended unless it is frozen."""
        B, S, _ = x_BSD.shape
        q = self.q(x_BSD)[0].view(B, S, self.local_heads, self.head_dim).transpose(1, 2)
        k = self.k(x_BSD)[0].view(B, S, self.local_kv, self.head_dim).transpose(1, 2)
        v = self.v(x_BSD)[0].view(B, S, self.local_kv, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv is not None:
            k, v = kv.extend(k, v)
        out = attention(q, k, v, mask)  # [B,H,S,d]
        out = out.transpose(1, 2).reshape(B, S, self.local_heads * self.head_dim)
        return self.o(out)[0]


class LayerKV:
    """One layer's key/value cache [B, Hkv, T, d]. A frozen cache is read but not grown: image
    generation reuses a text prefix across ODE steps."""

    def __init__(self):
        self.k = self.v = None
        self.frozen = False

    def extend(self, k, v):
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        if not self.frozen:
            self.k, self.v = k, v
        return k, v


class GeluMLP(nn.Module):
    def __init__(self, cfg, d_in: int, d_ff: int, d_out: int, std: float, out_std: float):
        super().__init__()
        self.fc1 = col_linear(cfg, d_in, d_ff, std, True)
        self.fc2 = row_linear(cfg, d_ff, d_out, out_std, True)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)[0]))[0]


class SwiGLU(nn.Module):
    def __init__(self, cfg, hidden: int, ffn: int, std: float, out_std: float):
        super().__init__()
        self.gate = col_linear(cfg, hidden, ffn, std, False)
        self.up = col_linear(cfg, hidden, ffn, std, False)
        self.down = row_linear(cfg, ffn, hidden, out_std, False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)[0]) * self.up(x)[0])[0]


def scaled_std(std: float, num_layers: int) -> float:
    """Output projections scaled by depth (GPT-2 / megatron convention) for stable residuals."""
    return std / math.sqrt(2.0 * max(num_layers, 1))
