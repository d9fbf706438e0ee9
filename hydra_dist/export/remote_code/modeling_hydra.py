"""HYDRA in plain PyTorch for Hugging Face transformers (exported by hydra_dist; self-contained).

The same computation as hydra_dist.models.hydra.HydraModel at TP=1, with nn.Linear in place of
megatron's tensor-parallel layers and the same parameter names, so an exported folder loads with
  AutoModel.from_pretrained(folder, trust_remote_code=True)
forward(...) takes the training batch (input_ids, labels, position_ids, segment_ids, image_ids,
visual_index, images, is_gen, image_weight) and a noise_seed and returns the NTP and
flow-matching losses and the predicted velocity, as the training forward does.
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_hydra import HydraConfig


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


def rope_cos_sin(position_ids, head_dim, theta, dtype):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32,
                                        device=position_ids.device) / head_dim))
    freqs = position_ids.float()[..., None] * inv
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


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

    def forward(self, x, mask=None, rope=None):
        B, S, _ = x.shape
        q = self.q(x).view(B, S, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, S, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, S, self.kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.kv_heads != self.heads:
            rep = self.heads // self.kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
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

    def forward(self, x, mask=None, rope=None):
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


# --- LLM ------------------------------------------------------------------------------------
class DecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        H = c["hidden_size"]
        self.input_norm = RMSNorm(H, c["rms_norm_eps"])
        self.attn = SelfAttention(H, c["num_attention_heads"], c["num_key_value_heads"], True, False)
        self.post_norm = RMSNorm(H, c["rms_norm_eps"])
        self.mlp = nn.Module()
        self.mlp.gate = nn.Linear(H, c["intermediate_size"], bias=False)
        self.mlp.up = nn.Linear(H, c["intermediate_size"], bias=False)
        self.mlp.down = nn.Linear(c["intermediate_size"], H, bias=False)

    def forward(self, x, mask, rope):
        x = x + self.attn(self.input_norm(x), mask, rope)
        h = self.post_norm(x)
        return x + self.mlp.down(F.silu(self.mlp.gate(h)) * self.mlp.up(h))


class QwenLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.lm_head = None if c.get("tie_word_embeddings") else nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)

    def forward(self, x, mask, position_ids):
        rope = rope_cos_sin(position_ids, self.c["hidden_size"] // self.c["num_attention_heads"],
                            self.c["rope_theta"], x.dtype)
        for layer in self.layers:
            x = layer(x, mask, rope)
        return self.norm(x)

    def logits(self, h):
        return h @ self.embed.weight.t() if self.lm_head is None else self.lm_head(h)


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
        return self.mlp(timestep_embedding(t, self.dim))


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


@dataclass
class HydraOutput(ModelOutput):
    loss: Optional[torch.FloatTensor] = None
    ntp_loss: Optional[torch.FloatTensor] = None
    fm_loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    v_pred: Optional[torch.FloatTensor] = None
    v_target: Optional[torch.FloatTensor] = None


class HydraPreTrainedModel(PreTrainedModel):
    config_class = HydraConfig
    base_model_prefix = "hydra"
    _no_split_modules = ["DecoderLayer", "ViTBlock"]

    def _init_weights(self, module):
        # Weights come from the export; missing ones (none in a complete export) start small.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)


class HydraForPretraining(HydraPreTrainedModel):
    def __init__(self, config: HydraConfig):
        super().__init__(config)
        v, c, h = config.vision_config, config.language_config, config.head_config
        self.patch = PatchEmbed(v)
        self.gen_vit = ViTStack(v, v["gen_layers"])
        self.gsb = GSB(v["gsb"], v["hidden_size"])
        self.sem_vit = ViTStack(v, v["sem_layers"])
        # Sem-ViT's own CLS (the GSB carries patch tokens only)
        self.sem_cls = PrependToken(v["hidden_size"]) if v.get("use_cls_token", False) else None
        if config.part == "all":
            self.projector = Projector(v["hidden_size"], c["hidden_size"], h["merge"])
            self.llm = QwenLM(c)
            self.flow_head = FlowHead(c["hidden_size"], h["merge"] ** 2 * v["gsb"]["latent_channels"],
                                      h["flow_head_layers"], h["flow_head_hidden"], h["time_embed_dim"],
                                      h.get("latent_skip", False))
        self.post_init()

    # HYDRA-TOK
    def encode_latent(self, images):
        """Clean GSB latent mu [B, N, C]."""
        h = self.gen_vit(self.patch(images.to(self.patch.proj.weight.dtype)))
        return self.gsb.encode_mu(h[:, int(self.patch.use_cls):])

    def semantic_features(self, latent):
        """Sem-ViT output for a (clean or noised) latent [B, N, D] (patch tokens; CLS dropped)."""
        h = self.gsb.decode(latent)
        if self.sem_cls is None:
            return self.sem_vit(h)
        return self.sem_vit(self.sem_cls(h))[:, 1:]

    # unified model
    def text_logits(self, input_ids, position_ids=None):
        B, S = input_ids.shape
        seg = torch.ones_like(input_ids)
        pos = torch.arange(S, device=input_ids.device)[None].expand(B, S) if position_ids is None else position_ids
        h = self.llm(self.llm.embed(input_ids), build_mask(seg, torch.zeros_like(seg)), pos)
        return self.llm.logits(h)

    def flow_noise(self, sample_ids, noise_seed, mu):
        """(t [B], eps [B,N,C]): one generator per sample, seeded as in training."""
        ts, epss = [], []
        for sid in sample_ids.tolist():
            gen = torch.Generator().manual_seed(hash((int(noise_seed), int(sid))) % (2 ** 62))
            z = torch.randn(1, generator=gen)
            ts.append(torch.sigmoid(z) if self.config.time_sampling == "logit_normal"
                      else torch.rand(1, generator=gen))
            epss.append(torch.randn(mu.shape[1:], generator=gen))
        t, s = torch.cat(ts), float(self.config.time_shift)
        t = t if s == 1.0 else s * t / (1 + (s - 1) * t)   # model.time_shift, as in training
        return t.to(mu), torch.stack(epss).to(mu)

    def forward(self, input_ids, labels, position_ids, segment_ids, image_ids, visual_index, images,
                is_gen, sample_ids, image_weight=None, noise_seed=0, **unused):
        """The training batch layout: rows [R,S] of packed samples, images [I,3,H,W],
        visual_index [I,M] flat positions into R*S (-1: a dummy image, placed nowhere)."""
        if self.config.part != "all":
            raise ValueError("this export holds HYDRA-TOK only: use encode_latent / semantic_features")
        merge = self.config.head_config["merge"]
        if images.dtype == torch.uint8:   # hydra_dist's loader batches carry uint8 pixels
            images = images.float().div_(127.5).sub_(1.0)
        mu = self.encode_latent(images)
        t, eps = self.flow_noise(sample_ids, noise_seed, mu)
        gen_f = is_gen.to(mu.dtype)
        t = t * gen_f
        tt = t[:, None, None].to(mu.dtype)
        x_t = (1 - tt) * mu + tt * eps
        vis = self.projector(self.semantic_features(x_t))
        emb = self.llm.embed(input_ids)
        R, S, H = emb.shape
        placed = visual_index >= 0
        emb = emb.reshape(R * S, H).index_copy(0, visual_index[placed], vis[placed].to(emb.dtype))
        h = self.llm(emb.reshape(R, S, H), build_mask(segment_ids, image_ids), position_ids)
        logits = self.llm.logits(h)
        valid = labels >= 0
        per_tok = F.cross_entropy(logits.float().flatten(0, 1), labels.clamp(min=0).flatten(),
                                  reduction="none").view_as(labels)
        ntp = (per_tok * valid).sum() / valid.sum().clamp(min=1)
        skip = merge_patches(x_t, merge) if self.flow_head.latent_in is not None else None
        v_pred = self.flow_head(h.reshape(R * S, H)[visual_index.clamp(min=0)], t, skip)
        v_target = merge_patches(eps - mu, merge)
        per_image = (v_pred.float() - v_target.float()).pow(2).mean(dim=(1, 2))
        w = gen_f.float() * (torch.ones_like(gen_f) if image_weight is None else image_weight.float())
        fm = (per_image * w).sum() / w.sum().clamp(min=1.0)
        loss = self.config.ntp_weight * ntp + self.config.fm_weight * fm
        return HydraOutput(loss=loss, ntp_loss=ntp, fm_loss=fm, logits=logits, v_pred=v_pred, v_target=v_target)
