"""HYDRA-TOK's ViT halves (Gen-ViT and Sem-ViT): pre-norm blocks, bidirectional attention.

The block's options (norm type, QKV bias, QK-norm, layer scale, CLS token) exist so that an
InternViT checkpoint (transformers' InternVLVisionModel) runs exactly; the defaults are our
plain block. Attention and MLP are megatron TP layers; QK-norm normalises over the full q / k
width, so under TP its mean square is summed over the TP group.
"""
from __future__ import annotations

import torch
import torch.distributed.nn.functional as dist_fn
from megatron.core import parallel_state
from torch import nn

from hydra_dist.config.schema import ViTConfig
from hydra_dist.data.collate import pixels_to_unit
from hydra_dist.ops.attention import attention

from .layers import GeluMLP, RMSNorm, SelfAttention, scaled_std


def model_pixels(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The ViT's input in `dtype`: training batches carry uint8 pixels (converted here, on the
    model's device); eval and generation pass float images already in [-1, 1]."""
    if images.dtype == torch.uint8:
        images = pixels_to_unit(images)
    return images.to(dtype)


def make_norm(v: ViTConfig, dim: int) -> nn.Module:
    return RMSNorm(dim, v.norm_eps) if v.norm_type == "rms_norm" else nn.LayerNorm(dim, eps=v.norm_eps)


class TPRMSNorm(nn.Module):
    """RMSNorm over a width split across TP ranks (weight sharded like the column-parallel
    output it follows). The all-reduce is differentiable: every shard's values move every
    rank's scale."""

    def __init__(self, full_dim: int, eps: float):
        super().__init__()
        tp = parallel_state.get_tensor_model_parallel_world_size()
        self.full_dim, self.eps = full_dim, eps
        self.weight = nn.Parameter(torch.ones(full_dim // tp))
        # read by the import code and by DeepSpeed's grad-norm (no double counting)
        self.weight.tensor_model_parallel, self.weight.partition_dim = True, 0
        self.weight.partition_stride = 1

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        ss = x.pow(2).sum(-1, keepdim=True)
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            ss = dist_fn.all_reduce(ss, group=parallel_state.get_tensor_model_parallel_group())
        return self.weight * (x * torch.rsqrt(ss / self.full_dim + self.eps)).to(dtype)


class ViTAttention(SelfAttention):
    def __init__(self, mp, v: ViTConfig, std: float, out_std: float):
        super().__init__(mp, v.hidden_size, v.num_heads, v.num_heads, std, qkv_bias=v.qkv_bias,
                         out_bias=True, out_std=out_std)
        self.qk_norm = v.qk_norm
        if v.qk_norm:
            # eps 1e-6 whatever norm_eps says, as InternVL's q/k norms
            self.q_norm = TPRMSNorm(v.hidden_size, 1e-6)
            self.k_norm = TPRMSNorm(v.hidden_size, 1e-6)

    def forward(self, x_BSD, mask=None, rope=None):
        if not self.qk_norm:
            return super().forward(x_BSD, mask)
        B, S, _ = x_BSD.shape
        shape = (B, S, self.local_heads, self.head_dim)
        q = self.q_norm(self.q(x_BSD)[0]).view(shape).transpose(1, 2)
        k = self.k_norm(self.k(x_BSD)[0]).view(shape).transpose(1, 2)
        v = self.v(x_BSD)[0].view(shape).transpose(1, 2)
        out = attention(q, k, v, mask).transpose(1, 2).reshape(B, S, -1)
        return self.o(out)[0]


class ViTBlock(nn.Module):
    def __init__(self, mp, v: ViTConfig, std: float, depth: int):
        super().__init__()
        out_std = scaled_std(std, depth)
        self.norm1 = make_norm(v, v.hidden_size)
        self.attn = ViTAttention(mp, v, std, out_std)
        self.norm2 = make_norm(v, v.hidden_size)
        self.mlp = GeluMLP(mp, v.hidden_size, v.mlp_size, v.hidden_size, std, out_std)
        self.layer_scale = v.layer_scale_init > 0
        if self.layer_scale:
            self.ls1 = nn.Parameter(torch.full((v.hidden_size,), v.layer_scale_init))
            self.ls2 = nn.Parameter(torch.full((v.hidden_size,), v.layer_scale_init))

    def forward(self, x_BND):
        a = self.attn(self.norm1(x_BND))
        x_BND = x_BND + (self.ls1 * a if self.layer_scale else a)
        m = self.mlp(self.norm2(x_BND))
        return x_BND + (self.ls2 * m if self.layer_scale else m)


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


class PrependToken(nn.Module):
    """A learned token in front of a sequence (Sem-ViT's CLS: the GSB carries patch tokens only)."""

    def __init__(self, dim: int):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x_BND):
        return torch.cat([self.token.expand(x_BND.shape[0], -1, -1), x_BND], dim=1)


# InternViT's preprocessing (InternVL: torchvision Normalize after ToTensor), per RGB channel
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pixel_affine(pixel_norm: str):
    """(scale, shift) per channel mapping [-1, 1] pixels x to what the patch embedding sees:
    imagenet: ((x + 1) / 2 - mean) / std = x / (2 std) + (0.5 - mean) / std; unit: None
    (x as is). "auto" must have been resolved (config/pixel_norm.py); a ViTConfig built by hand
    in a test keeps [-1, 1]."""
    if pixel_norm != "imagenet":
        return None
    std, mean = torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
    return (1 / (2 * std)).view(1, 3, 1, 1), ((0.5 - mean) / std).view(1, 3, 1, 1)


def normalise_pixels(img_B3HW: torch.Tensor, pixel_norm: str, cache: dict | None = None):
    """[-1, 1] pixels -> the patch embedding's input, computed in fp32, returned in the input's
    dtype. cache: {device: (scale, shift)}, so a module builds its constants once per device."""
    if pixel_norm != "imagenet":
        return img_B3HW
    cache = {} if cache is None else cache
    if img_B3HW.device not in cache:
        cache[img_B3HW.device] = tuple(t.to(img_B3HW.device) for t in pixel_affine(pixel_norm))
    scale, shift = cache[img_B3HW.device]
    return (img_B3HW.float() * scale + shift).to(img_B3HW.dtype)


class PatchEmbed(nn.Module):
    """(pixel normalisation) -> non-overlapping patches -> linear -> (CLS in front) -> +
    learned positions. The normalisation lives here, the first op every path shares (training,
    eval, generation, the teacher), so they cannot disagree."""

    def __init__(self, v: ViTConfig, std: float):
        super().__init__()
        self.pixel_norm = "unit" if v.pixel_norm == "auto" else v.pixel_norm
        # fp32 constants per device, not buffers: module.to(bf16) would round them, and the
        # checkpoints keep their keys (the config records the choice)
        self._affine: dict = {}
        self.p = v.patch_size
        n = (v.image_size // v.patch_size) ** 2
        self.proj = nn.Linear(3 * self.p * self.p, v.hidden_size)
        self.pos = nn.Parameter(torch.randn(1, n, v.hidden_size) * std)
        self.use_cls = v.use_cls_token
        if self.use_cls:
            self.cls = nn.Parameter(torch.zeros(1, 1, v.hidden_size))
            self.cls_pos = nn.Parameter(torch.zeros(1, 1, v.hidden_size))

    def cls_token(self, batch: int):
        """The CLS token as it enters the first block: [B,1,D]."""
        return (self.cls + self.cls_pos).expand(batch, -1, -1)

    def forward(self, img_B3HW):
        img_B3HW = normalise_pixels(img_B3HW, self.pixel_norm, self._affine)
        B, C, H, W = img_B3HW.shape
        p = self.p
        x = img_B3HW.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
        x = self.proj(x.reshape(B, (H // p) * (W // p), C * p * p)) + self.pos
        return torch.cat([self.cls_token(B), x], dim=1) if self.use_cls else x
