"""HYDRA for Hugging Face transformers (exported by hydra_dist; needs only torch and transformers).

The same computation as hydra_dist.models.hydra.HydraModel at TP=1: the vision tower, projector,
flow head and pixel decoder in plain PyTorch with hydra_dist's parameter names, the LLM is
transformers' Qwen2Model (`llm.*`, Qwen2 names; `lm_head.weight` unless tied), so the KV cache,
SDPA and `generate` are transformers' own.

  HydraForConditionalGeneration (AutoModelForCausalLM): generate() for text and image
      understanding (pixel_values fill the image-token positions, which attend to each other
      bidirectionally as in training); generate_image() for text -> image (Euler ODE in the GSB
      latent space with classifier-free guidance, then the pixel flow decoder).
  HydraForPretraining (AutoModel): forward(...) takes hydra_dist's training batch (input_ids,
      labels, position_ids, segment_ids, image_ids, visual_index, images, is_gen, sample_ids)
      and a noise_seed and returns the NTP and flow-matching losses as the training forward does.
"""
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
from .modules_hydra import (GSB, FlowHead, PatchEmbed, PixelFlowDecoder, PrependToken, Projector,
                            ViTStack, build_mask, merge_patches, unmerge_patches)


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
    # not flash-attn: the image positions need an arbitrary (4D additive) mask
    _supports_sdpa = True

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
