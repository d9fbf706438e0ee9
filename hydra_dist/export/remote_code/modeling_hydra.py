"""HYDRA for Hugging Face transformers (exported by hydra_dist; needs only torch and transformers).

The same computation as hydra_dist.models.hydra.HydraModel at TP=1: the vision tower, projector,
flow head and pixel decoder in plain PyTorch with hydra_dist's parameter names, the LLM is
transformers' Qwen2Model (`llm.*`, Qwen2 names; `lm_head.weight` unless tied), so the KV cache,
SDPA / flash attention and `generate` are transformers' own.

  HydraForConditionalGeneration (AutoModelForCausalLM): generate() for text and image
      understanding (pixel_values fill the image-token positions, which attend to each other
      bidirectionally as in training); generate_image() for text -> image (Euler ODE in the GSB
      latent space with classifier-free guidance, then the pixel flow decoder).
  HydraForPretraining (AutoModel): forward(...) takes hydra_dist's training batch (input_ids,
      labels, position_ids, segment_ids, image_ids, visual_index, images, is_gen, sample_ids)
      and a noise_seed and returns the NTP and flow-matching losses as the training forward does.
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel, Qwen2Config, Qwen2Model
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast
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


def shift_time(t, s):
    """model.time_shift: t -> s t / (1 + (s - 1) t), as in training."""
    return t if s == 1.0 else s * t / (1 + (s - 1) * t)


def additive_mask(allowed, dtype):
    """bool [B,1,Q,K] (True: attend) -> the additive float mask transformers takes as a 4D mask."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)


def image_blocks(input_ids, image_token_id):
    """[B,S] long: k > 0 on the k-th run of image tokens of a row, 0 elsewhere."""
    img = input_ids == image_token_id
    starts = img & ~F.pad(img, (1, 0))[:, :-1]
    return torch.cumsum(starts.long(), dim=1) * img


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
    _no_split_modules = ["Qwen2DecoderLayer", "ViTBlock", "DecoderBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True

    def _init_weights(self, module):
        # Weights come from the export; missing ones (none in a complete export) start small.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)


def qwen2_config(config):
    c = Qwen2Config(**config.language_config)
    # the attention kernel the user asked for (attn_implementation=...) applies to the LLM too
    c._attn_implementation = getattr(config, "_attn_implementation", None) or "sdpa"
    return c


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
            self.llm = Qwen2Model(qwen2_config(config))
            # tied (Qwen2.5-1.5B): logits use the embedding matrix, no second copy is stored
            self.lm_head = None if c.get("tie_word_embeddings") else \
                nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
            self.flow_head = FlowHead(c["hidden_size"], h["merge"] ** 2 * v["gsb"]["latent_channels"],
                                      h["flow_head_layers"], h["flow_head_hidden"], h["time_embed_dim"],
                                      h.get("latent_skip", False))
        # the pixel decoder travels with the export when the run's tokenizer run was known
        d = getattr(config, "decoder_config", None)
        self.decoder = PixelFlowDecoder(d, v, v["gsb"]["latent_channels"]) if d else None
        self.post_init()

    # HYDRA-TOK
    def encode_latent(self, images):
        """Clean GSB latent mu [B, N, C] of images in [-1, 1] (or uint8 pixels)."""
        if images.dtype == torch.uint8:   # hydra_dist's loader batches carry uint8 pixels
            images = images.float().div_(127.5).sub_(1.0)
        h = self.gen_vit(self.patch(images.to(self.patch.proj.weight.dtype)))
        return self.gsb.encode_mu(h[:, int(self.patch.use_cls):])

    def semantic_features(self, latent):
        """Sem-ViT output for a (clean or noised) latent [B, N, D] (patch tokens; CLS dropped)."""
        h = self.gsb.decode(latent)
        if self.sem_cls is None:
            return self.sem_vit(h)
        return self.sem_vit(self.sem_cls(h))[:, 1:]

    def visual_tokens(self, latent):
        """The LLM inputs [B, M, H] for a latent (M = N / merge^2)."""
        return self.projector(self.semantic_features(latent))

    def decode_latent(self, latent, steps=20, seed=0):
        """Pixels [B,3,H,W] in [-1, 1] from GSB latents with the pixel flow decoder."""
        if self.decoder is None:
            raise ValueError("this export has no pixel decoder: export the run with "
                             "hydra-export-hf --decoder TOK_RUN (the HYDRA-TOK run its vision "
                             "tower came from)")
        size = self.config.vision_config["image_size"]
        noise = torch.randn(latent.shape[0], 3, size, size, generator=torch.Generator().manual_seed(seed))
        w = self.decoder.inp.weight
        return self.decoder.sample(latent.to(w), noise.to(w), steps)

    # the LLM
    def get_input_embeddings(self):
        return self.llm.embed_tokens

    def logits(self, h):
        return F.linear(h, self.llm.embed_tokens.weight) if self.lm_head is None else self.lm_head(h)

    def run_llm(self, embeds, mask, position_ids, cache=None):
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                       past_key_values=cache, use_cache=cache is not None)
        return out.last_hidden_state

    def flow_noise(self, sample_ids, noise_seed, mu):
        """(t [B], eps [B,N,C]): one generator per sample, seeded as in training."""
        ts, epss = [], []
        for sid in sample_ids.tolist():
            gen = torch.Generator().manual_seed(hash((int(noise_seed), int(sid))) % (2 ** 62))
            z = torch.randn(1, generator=gen)
            ts.append(torch.sigmoid(z) if self.config.time_sampling == "logit_normal"
                      else torch.rand(1, generator=gen))
            epss.append(torch.randn(mu.shape[1:], generator=gen))
        t = shift_time(torch.cat(ts), float(self.config.time_shift))
        return t.to(mu), torch.stack(epss).to(mu)

    def forward(self, input_ids, labels, position_ids, segment_ids, image_ids, visual_index, images,
                is_gen, sample_ids, image_weight=None, noise_seed=0, **unused):
        """The training batch layout: rows [R,S] of packed samples, images [I,3,H,W],
        visual_index [I,M] flat positions into R*S (-1: a dummy image, placed nowhere)."""
        if self.config.part != "all":
            raise ValueError("this export holds HYDRA-TOK only: use encode_latent / semantic_features")
        merge = self.config.head_config["merge"]
        mu = self.encode_latent(images)
        t, eps = self.flow_noise(sample_ids, noise_seed, mu)
        gen_f = is_gen.to(mu.dtype)
        t = t * gen_f
        tt = t[:, None, None].to(mu.dtype)
        x_t = (1 - tt) * mu + tt * eps
        vis = self.visual_tokens(x_t)
        emb = self.llm.embed_tokens(input_ids)
        R, S, H = emb.shape
        placed = visual_index >= 0
        emb = emb.reshape(R * S, H).index_copy(0, visual_index[placed], vis[placed].to(emb.dtype))
        mask = additive_mask(build_mask(segment_ids, image_ids), emb.dtype)
        h = self.run_llm(emb.reshape(R, S, H), mask, position_ids)
        logits = self.logits(h)
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


class HydraForConditionalGeneration(HydraForPretraining, GenerationMixin):
    """Inference: generate() (text, and answers about images given as pixel_values) and
    generate_image() (text -> image). Sequences follow the training layout: understanding
    [BOS, IMG x M, text...], generation [BOS, text, EOS, IMG x M] (HydraProcessor builds both)."""

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None,
                past_key_values=None, inputs_embeds=None, labels=None, use_cache=None,
                cache_position=None, logits_to_keep=0, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.llm.embed_tokens(input_ids)
        if pixel_values is not None:
            # prefill with images: the image-token positions take the visual tokens and attend to
            # each other bidirectionally (the training mask), text stays causal
            if past_key_values is not None and past_key_values.get_seq_length() > 0:
                raise ValueError("pixel_values go with the first (prefill) call only")
            img_id = self.config.image_token_id
            vis = self.visual_tokens(self.encode_latent(pixel_values))
            where = input_ids == img_id
            if int(where.sum()) != vis.shape[0] * vis.shape[1]:
                raise ValueError(f"{int(where.sum())} image tokens in input_ids, but {vis.shape[0]} "
                                 f"images of {vis.shape[1]} tokens each (use HydraProcessor)")
            inputs_embeds = inputs_embeds.masked_scatter(where[..., None], vis.to(inputs_embeds.dtype))
            blocks = image_blocks(input_ids, img_id)
            S = input_ids.shape[1]
            idx = torch.arange(S, device=input_ids.device)
            allowed = (idx[None, :, None] >= idx[None, None, :]) | \
                ((blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] > 0))
            if attention_mask is not None and attention_mask.dim() == 2:
                allowed = allowed & attention_mask.bool()[:, None, :]
                allowed |= torch.eye(S, dtype=torch.bool, device=allowed.device)[None]
            attention_mask = additive_mask(allowed[:, None], inputs_embeds.dtype)
        out = self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                       position_ids=position_ids, past_key_values=past_key_values,
                       use_cache=use_cache, cache_position=cache_position)
        h = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.logits(h[:, keep])
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values)

    def prepare_inputs_for_generation(self, input_ids, pixel_values=None, past_key_values=None,
                                      cache_position=None, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, past_key_values=past_key_values,
                                                       cache_position=cache_position, **kwargs)
        first = cache_position is None or int(cache_position[0]) == 0
        inputs["pixel_values"] = pixel_values if first else None
        return inputs

    # text -> image
    def _prefix(self, ids):
        cache = DynamicCache()
        L = ids.shape[1]
        self.run_llm(self.llm.embed_tokens(ids), None, torch.arange(L, device=ids.device)[None], cache)
        return cache, L

    def _velocity(self, cache, L, x, t):
        vis = self.visual_tokens(x)
        M = vis.shape[1]
        # the image tokens see the whole prompt and each other: an all-allowed mask (not causal)
        mask = torch.zeros(1, 1, M, L + M, dtype=vis.dtype, device=vis.device)
        h = self.run_llm(vis, mask, (L + torch.arange(M, device=vis.device))[None], cache)
        cache.crop(L)   # the prompt's keys stay; this step's image keys go
        merge = self.config.head_config["merge"]
        skip = merge_patches(x, merge) if self.flow_head.latent_in is not None else None
        v = self.flow_head(h, torch.full((1,), t, device=vis.device), skip)
        return unmerge_patches(v, merge, self.config.vision_config["gsb"]["latent_channels"])

    @torch.no_grad()
    def generate_latent(self, input_ids, num_steps=20, guidance_scale=3.0, seed=0,
                        negative_input_ids=None):
        """GSB latent [1, N, C] for one prompt (input_ids [1, L] = [BOS, text, EOS])."""
        v = self.config.vision_config
        N = (v["image_size"] // v["patch_size"]) ** 2
        dev = self.llm.embed_tokens.weight.device
        cond = self._prefix(input_ids.to(dev))
        if negative_input_ids is None:
            negative_input_ids = torch.tensor([[self.config.bos_token_id, self.config.eos_token_id]])
        uncond = self._prefix(negative_input_ids.to(dev)) if guidance_scale != 1.0 else None
        x = torch.randn(1, N, v["gsb"]["latent_channels"], generator=torch.Generator().manual_seed(seed))
        x = x.to(dev, self.llm.embed_tokens.weight.dtype)
        # the training time shift also spaces the steps: more of them close to t = 1
        ts = shift_time(torch.linspace(1.0, 0.0, num_steps + 1), float(self.config.time_shift)).tolist()
        for t, t_next in zip(ts[:-1], ts[1:]):
            vel = self._velocity(*cond, x, t)
            if uncond is not None:
                v_u = self._velocity(*uncond, x, t)
                vel = v_u + guidance_scale * (vel - v_u)
            x = x - (t - t_next) * vel
        return x

    @torch.no_grad()
    def generate_image(self, input_ids, num_steps=None, guidance_scale=None, decoder_steps=None,
                       seed=0, negative_input_ids=None):
        """Pixels [1, 3, H, W] in [-1, 1] for a prompt (HydraProcessor.postprocess -> PIL).
        Defaults: config.image_generation (the values hydra-generate uses)."""
        d = dict(getattr(self.config, "image_generation", None) or {})
        mu = self.generate_latent(input_ids, num_steps or d.get("num_steps", 20),
                                  d.get("guidance_scale", 3.0) if guidance_scale is None else guidance_scale,
                                  seed, negative_input_ids)
        return self.decode_latent(mu, decoder_steps or d.get("decoder_steps", 20), seed)
