"""HYDRA's building blocks for the exported remote code (hydra_dist; needs only torch): the
vision tower (patch embedding, ViT blocks, GSB), the projector and flow head, and HYDRA-TOK's
pixel flow decoder, with hydra_dist's parameter names. modeling_hydra.py assembles them around
transformers' Qwen2Model."""
import math

import torch
import torch.nn.functional as F
from torch import nn


# --- shared pieces ----------------------------------------------------------------------------
def build_mask(segment_ids, image_ids):
    """[B,1,S,S] bool: causal over text, bidirectional inside each image, per packed segment."""
    S = segment_ids.shape[1]
    idx = torch.arange(S, device=segment_ids.device)
    causal = idx[None, :, None] >= idx[None, None, :]
    seg_q, seg_k = segment_ids[:, :, None], segment_ids[:, None, :]
    img_q, img_k = image_ids[:, :, None], image_ids[:, None, :]
    same_image = (img_q == img_k) & (img_q > 0)
    allowed = (seg_q == seg_k) & (seg_k > 0) & (causal | same_image)
    allowed |= torch.eye(S, dtype=torch.bool, device=allowed.device)[None]
    return allowed[:, None]


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class SelfAttention(nn.Module):
    def __init__(self, hidden, heads, kv_heads, qkv_bias, out_bias):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.q = nn.Linear(hidden, heads * self.head_dim, bias=qkv_bias)
        self.k = nn.Linear(hidden, kv_heads * self.head_dim, bias=qkv_bias)
        self.v = nn.Linear(hidden, kv_heads * self.head_dim, bias=qkv_bias)
        self.o = nn.Linear(heads * self.head_dim, hidden, bias=out_bias)

    def forward(self, x, mask=None):
        B, S, _ = x.shape
        q = self.q(x).view(B, S, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, S, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, S, self.kv_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(out.transpose(1, 2).reshape(B, S, self.heads * self.head_dim))


class GeluMLP(nn.Module):
    def __init__(self, d_in, d_ff, d_out):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_ff)
        self.fc2 = nn.Linear(d_ff, d_out)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


# --- HYDRA-TOK ------------------------------------------------------------------------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)   # InternViT's preprocessing (torchvision Normalize)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PatchEmbed(nn.Module):
    def __init__(self, v):
        super().__init__()
        self.p = v["patch_size"]
        n = (v["image_size"] // v["patch_size"]) ** 2
        self.proj = nn.Linear(3 * self.p * self.p, v["hidden_size"])
        self.pos = nn.Parameter(torch.zeros(1, n, v["hidden_size"]))
        self.use_cls = v.get("use_cls_token", False)
        # imagenet: ((x + 1) / 2 - mean) / std per channel in fp32, InternViT's input (exports
        # from before the key fed [-1, 1] as is)
        self.pixel_norm = v.get("pixel_norm", "unit")
        if self.use_cls:  # InternViT: a CLS token with its own position in front of the patches
            self.cls = nn.Parameter(torch.zeros(1, 1, v["hidden_size"]))
            self.cls_pos = nn.Parameter(torch.zeros(1, 1, v["hidden_size"]))

    def forward(self, img):
        if self.pixel_norm == "imagenet":
            mean = torch.tensor(IMAGENET_MEAN, device=img.device).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=img.device).view(1, 3, 1, 1)
            img = (img.float() * (1 / (2 * std)) + (0.5 - mean) / std).to(img.dtype)
        B, C, H, W = img.shape
        p = self.p
        x = img.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
        x = self.proj(x.reshape(B, (H // p) * (W // p), C * p * p)) + self.pos
        if self.use_cls:
            x = torch.cat([(self.cls + self.cls_pos).expand(B, -1, -1), x], dim=1)
        return x


class PrependToken(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x):
        return torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)


def make_norm(v, dim):
    if v.get("norm_type", "layer_norm") == "rms_norm":
        return RMSNorm(dim, v["norm_eps"])
    return nn.LayerNorm(dim, eps=v["norm_eps"])


class ViTAttention(SelfAttention):
    def __init__(self, v):
        D = v["hidden_size"]
        super().__init__(D, v["num_heads"], v["num_heads"], v.get("qkv_bias", True), True)
        self.qk_norm = v.get("qk_norm", False)
        if self.qk_norm:  # over the full q / k width, eps 1e-6 (InternViT)
            self.q_norm, self.k_norm = RMSNorm(D, 1e-6), RMSNorm(D, 1e-6)

    def forward(self, x, mask=None):
        if not self.qk_norm:
            return super().forward(x, mask)
        B, S, _ = x.shape
        shape = (B, S, self.heads, self.head_dim)
        q = self.q_norm(self.q(x)).view(shape).transpose(1, 2)
        k = self.k_norm(self.k(x)).view(shape).transpose(1, 2)
        v = self.v(x).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(out.transpose(1, 2).reshape(B, S, -1))


class ViTBlock(nn.Module):
    def __init__(self, v):
        super().__init__()
        D = v["hidden_size"]
        self.norm1 = make_norm(v, D)
        self.attn = ViTAttention(v)
        self.norm2 = make_norm(v, D)
        self.mlp = GeluMLP(D, v["mlp_size"], D)
        self.layer_scale = v.get("layer_scale_init", 0.0) > 0
        if self.layer_scale:
            self.ls1 = nn.Parameter(torch.ones(D))
            self.ls2 = nn.Parameter(torch.ones(D))

    def forward(self, x):
        a = self.attn(self.norm1(x))
        x = x + (self.ls1 * a if self.layer_scale else a)
        m = self.mlp(self.norm2(x))
        return x + (self.ls2 * m if self.layer_scale else m)


class ViTStack(nn.Module):
    def __init__(self, v, n):
        super().__init__()
        self.blocks = nn.ModuleList(ViTBlock(v) for _ in range(n))

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return x


class GSB(nn.Module):
    def __init__(self, g, hidden):
        super().__init__()
        self.latent_channels = g["latent_channels"]
        self.proj = nn.Linear(hidden, 2 * g["latent_channels"])
        self.unproj = nn.Linear(g["latent_channels"], hidden)

    def encode_mu(self, h_mid):
        return self.proj(h_mid)[..., : self.latent_channels]

    def decode(self, latent):
        return self.unproj(latent)


# --- heads ----------------------------------------------------------------------------------
def merge_patches(x, m):
    B, N, D = x.shape
    g = int(math.isqrt(N))
    x = x.reshape(B, g // m, m, g // m, m, D).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (g // m) ** 2, m * m * D)


class Projector(nn.Module):
    def __init__(self, vit_dim, llm_dim, merge):
        super().__init__()
        self.merge = merge
        self.norm = nn.LayerNorm(vit_dim * merge * merge)
        self.mlp = GeluMLP(vit_dim * merge * merge, llm_dim, llm_dim)

    def forward(self, x):
        return self.mlp(self.norm(merge_patches(x, self.merge)))


def unmerge_patches(x, m, dim):
    B, M, _ = x.shape
    g = int(math.isqrt(M))
    x = x.reshape(B, g, g, m, m, dim).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (g * m) ** 2, dim)


def timestep_embedding(t, dim, max_period=10000.0):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbed(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        # sinusoids in fp32, then the Linear's own dtype (a bf16 export)
        return self.mlp(timestep_embedding(t, self.dim).to(self.mlp[0].weight.dtype))


class AdaLNBlock(nn.Module):
    def __init__(self, hidden, ffn):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))
        self.mod = nn.Linear(hidden, 3 * hidden)

    def forward(self, x, c):
        shift, scale, gate = self.mod(F.silu(c))[:, None].chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class FlowHead(nn.Module):
    def __init__(self, llm_dim, out_dim, layers, ffn, time_dim, latent_skip=False):
        super().__init__()
        self.inp = nn.Linear(llm_dim, llm_dim)
        # latent_skip: the head also reads the merged noisy latent x_t it denoises
        self.latent_in = nn.Linear(out_dim, llm_dim) if latent_skip else None
        self.time = TimeEmbed(time_dim, llm_dim)
        self.blocks = nn.ModuleList(AdaLNBlock(llm_dim, ffn) for _ in range(layers))
        self.final_norm = nn.LayerNorm(llm_dim, elementwise_affine=False, eps=1e-6)
        self.final_mod = nn.Linear(llm_dim, 2 * llm_dim)
        self.out = nn.Linear(llm_dim, out_dim)

    def forward(self, h, t, x_t=None):
        c = self.time(t)
        x = self.inp(h)
        if self.latent_in is not None:
            if x_t is None:
                raise ValueError("this flow head (latent_skip) needs the merged noisy latent x_t")
            x = x + self.latent_in(x_t.to(x.dtype))
        for blk in self.blocks:
            x = blk(x, c)
        shift, scale = self.final_mod(F.silu(c))[:, None].chunk(2, dim=-1)
        return self.out(self.final_norm(x) * (1 + scale) + shift)


# --- pixel flow decoder (HYDRA-TOK's, hydra_dist.models.tokenizer.decoder) ----------------------
def patchify(img, p):
    B, C, H, W = img.shape
    x = img.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(x, p, size):
    B, g = x.shape[0], size // p
    return x.reshape(B, g, g, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, 3, size, size)


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class DecoderBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        D = d["hidden_size"]
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(D, d["num_heads"], d["num_heads"], True, True)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mlp = GeluMLP(D, d["mlp_size"], D)
        self.mod = nn.Linear(D, 6 * D)

    def forward(self, x, c):
        s1, sc1, g1, s2, sc2, g2 = self.mod(F.silu(c))[:, None].chunk(6, dim=-1)
        x = x + (1 + g1) * self.attn(modulate(self.norm1(x), s1, sc1))
        return x + (1 + g2) * self.mlp(modulate(self.norm2(x), s2, sc2))


class PixelFlowDecoder(nn.Module):
    """v(x_t, t, latent): velocity of noisy pixels given the GSB latent (rectified flow)."""

    def __init__(self, d, v, latent_channels):
        super().__init__()
        self.p, self.size = v["patch_size"], v["image_size"]
        n, D, k = (self.size // self.p) ** 2, d["hidden_size"], 3 * self.p ** 2
        self.inp = nn.Linear(k, D)
        self.cond = nn.Linear(latent_channels, D)
        self.pos = nn.Parameter(torch.zeros(1, n, D))
        self.time = TimeEmbed(d["time_embed_dim"], D)
        self.blocks = nn.ModuleList(DecoderBlock(d) for _ in range(d["num_layers"]))
        self.final_norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.final_mod = nn.Linear(D, 2 * D)
        self.out = nn.Linear(D, k)

    def forward(self, x_t, t, latent):
        c = self.time(t)
        x = self.inp(patchify(x_t, self.p)) + self.cond(latent) + self.pos
        for blk in self.blocks:
            x = blk(x, c)
        shift, scale = self.final_mod(F.silu(c))[:, None].chunk(2, dim=-1)
        return unpatchify(self.out(modulate(self.final_norm(x), shift, scale)), self.p, self.size)

    @torch.no_grad()
    def sample(self, latent, noise, steps):
        """Uniform Euler steps from t=1 (noise) to t=0 (image in [-1, 1])."""
        x = noise
        ts = torch.linspace(1.0, 0.0, steps + 1, device=x.device, dtype=torch.float32)
        for i in range(steps):
            t = ts[i].expand(x.shape[0]).to(x.dtype)
            x = x + (ts[i + 1] - ts[i]).to(x.dtype) * self(x, t, latent)
        return x
