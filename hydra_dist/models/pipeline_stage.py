"""One pipeline model chunk of HydraModel: only this chunk's pieces are constructed.

Chunk c of C = pp * virtual_pp holds LLM layers [c*L/C, (c+1)*L/C); chunk 0 also holds the
vision tower (patch, Gen-ViT, GSB, Sem-ViT, projector) and the token embedding; chunk C-1 the
final norm, the LM head and the flow head. Parameter names are HydraModel's (global layer
indices: `llm.layers.5.attn.q.weight`), and every piece is seeded like HydraModel's
(llm.seed_piece), so a stage starts from exactly the single-process weights.

What travels between stages (one tensor, megatron's (seq, micro_batch, hidden) shape):
  rows [0, S)      the hidden states [S, R, H] (rows padded to the micro-batch size)
  rows [S, S + P)  the flow payload: column i holds image i's flow target merge(eps - mu)
                   (M x m^2 C values), with head.latent_skip its noisy latent merge(x_t) (as
                   many again), and its time t, zero-padded to P rows of H.
The flow target needs mu, which only the first stage computes (Gen-ViT -> GSB). Sending it
along with the activations costs P/S extra traffic (about 8% at 448 px on Qwen-1.5B) and keeps
the design exact even when GSB trains: its gradient flows back through the pipeline like any
activation's. The alternative, a frozen Gen-ViT copy on the last stage, would cost memory and a
second Gen-ViT forward and would be wrong for a trainable GSB.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from hydra_dist.config.schema import ModelConfig
from hydra_dist.ops.attention import make_mask, resolve_attention

from .heads import merge_patches
from .hydra import HydraModel, build_flow_head, build_sem_cls, build_vision
from .layers import RMSNorm, rope_cos_sin
from .partition import chunk_layers
from .vit import model_pixels
from .llm import (SEED_FLOW_HEAD, SEED_VISION, make_embed, make_layer, make_lm_head, ntp_loss,
                  seed_piece, tied_logits)


def visual_tokens_per_image(cfg: ModelConfig) -> int:
    return ((cfg.vit.image_size // cfg.vit.patch_size) // cfg.head.merge) ** 2


def payload_rows(cfg: ModelConfig) -> int:
    """P: rows of H values that carry one image's flow target (and x_t) and time."""
    latent = visual_tokens_per_image(cfg) * cfg.head.merge ** 2 * cfg.gsb.latent_channels
    per_image = latent * (2 if cfg.head.latent_skip else 1) + 1
    return math.ceil(per_image / cfg.llm.hidden_size)


def pad_rows(batch: dict, rows: int, pad_id: int = 0) -> dict:
    """Pad a micro-batch to `rows` token rows (pipeline p2p needs fixed shapes). Padding rows
    have segment 0 and no labels: they change no loss and no other row's attention."""
    R = batch["input_ids"].shape[0]
    if R == rows:
        return batch
    if R > rows:
        raise ValueError(f"micro-batch has {R} rows, more than the fixed {rows} the pipeline "
                         "sends (set data.pack_tokens=0 for the megatron engine with pp > 1)")
    out = dict(batch)
    S = batch["input_ids"].shape[1]
    for k, fill in (("input_ids", pad_id), ("labels", -100), ("position_ids", 0),
                    ("segment_ids", 0), ("image_ids", 0)):
        out[k] = torch.cat([batch[k], batch[k].new_full((rows - R, S), fill)])
    return out


class HydraStage(nn.Module):
    """Model chunk `chunk` of `num_chunks`; megatron's schedules call set_input_tensor then
    forward. `init_base` is HydraModel's init_base_seed() drawn after the same manual_seed."""

    def __init__(self, cfg: ModelConfig, mp, chunk: int, num_chunks: int, init_base: int,
                 schedule_config=None, vp_stage=None):
        super().__init__()
        from megatron.core.enums import ModelType
        self.cfg, self.config, self.model_type = cfg, schedule_config, ModelType.encoder_or_decoder
        self.vp_stage = vp_stage
        self.chunk, self.num_chunks = chunk, num_chunks
        self.first, self.last = chunk == 0, chunk == num_chunks - 1
        std = cfg.init_std
        if self.first:
            seed_piece(init_base, SEED_VISION)
            self.patch, self.gen_vit, self.gsb, self.sem_vit, self.projector = build_vision(mp, cfg)
            self.sem_cls = build_sem_cls(cfg)
        self.llm = nn.Module()
        if self.first:
            self.llm.embed = make_embed(mp, cfg.llm, std, init_base)
        self.layer_ids = chunk_layers(cfg.llm.num_layers, chunk, num_chunks)
        self.llm.layers = nn.ModuleDict({str(i): make_layer(mp, cfg.llm, std, i, init_base)
                                         for i in self.layer_ids})
        if self.last:
            self.llm.norm = RMSNorm(cfg.llm.hidden_size, cfg.llm.rms_norm_eps)
            self.llm.lm_head = make_lm_head(mp, cfg.llm, std, init_base)
            seed_piece(init_base, SEED_FLOW_HEAD)
            self.flow_head = build_flow_head(cfg)
        HydraModel.apply_freeze(self, cfg.freeze)
        self.checkpointing = False
        self.input_tensor = None

    # HydraModel's pieces, reused as they are (same code path, same numbers)
    encode_latent = HydraModel.encode_latent
    visual_tokens = HydraModel.visual_tokens
    flow_noise = HydraModel.flow_noise
    attention_path = HydraModel.attention_path

    def part_modules(self) -> dict:
        """The parts this chunk holds (the optimizer's parameter groups)."""
        names = {"gen_vit": ("patch", "gen_vit"), "gsb": ("gsb",), "sem_vit": ("sem_vit", "sem_cls"),
                 "projector": ("projector",), "llm": ("llm",), "flow_head": ("flow_head",)}
        return {part: [m for m in (getattr(self, a, None) for a in attrs) if m is not None]
                for part, attrs in names.items() if hasattr(self, attrs[0])}

    def set_input_tensor(self, tensors) -> None:
        self.input_tensor = tensors[0] if isinstance(tensors, (list, tuple)) else tensors

    # --- one micro-batch ---------------------------------------------------------------------
    def forward(self, batch: dict, noise_seed: int = 0, ntp_den=None, fm_den=None):
        """Not the last chunk: the [S + P, R, H] tensor for the next one. The last: a dict like
        HydraModel.forward's (loss, ntp, fm)."""
        S = batch["input_ids"].shape[1]
        if self.first:
            h, payload = self._embed(batch, noise_seed)
        else:
            x = self.input_tensor
            h, payload = x[:S].transpose(0, 1), x[S:]
        mask = make_mask(batch["segment_ids"], batch["image_ids"], self.attention_path())
        c = self.cfg.llm
        rope = rope_cos_sin(batch["position_ids"], c.hidden_size // c.num_heads, c.rope_theta, h.dtype)
        for layer in self.llm.layers.values():
            if self.checkpointing and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(layer, h, mask, rope, use_reentrant=False)
            else:
                h = layer(h, mask, rope)
        if not self.last:
            return torch.cat([h.transpose(0, 1), payload], dim=0)
        return self._heads(batch, self.llm.norm(h), payload, ntp_den, fm_den)

    def _embed(self, batch, noise_seed):
        """HydraModel.forward up to the first LLM layer, plus the flow payload."""
        images = model_pixels(batch["images"], self.patch.proj.weight.dtype)
        mu = self.encode_latent(images)
        if not self.gsb.proj.weight.requires_grad:
            mu = mu.detach()
        t, eps = self.flow_noise(batch["sample_ids"], noise_seed, mu)
        t = t * batch["is_gen"].float()
        tt = t[:, None, None]
        x_t = ((1 - tt) * mu.float() + tt * eps).to(mu.dtype)
        vis_BMH = self.visual_tokens(x_t)
        emb = self.llm.embed(batch["input_ids"])
        R, S, H = emb.shape
        vidx = batch["visual_index"]
        placed = vidx >= 0
        emb_flat = emb.reshape(R * S, H).index_copy(0, vidx[placed], vis_BMH[placed].to(emb.dtype))
        # dummy visual tokens join the graph with weight 0, as in HydraModel.forward
        h = emb_flat.reshape(R, S, H) + 0.0 * vis_BMH[~placed].sum()
        target = merge_patches(eps - mu.float(), self.cfg.head.merge)    # [I, M, m^2 C] fp32
        I = target.shape[0]
        if I > R:
            raise ValueError(f"{I} images in a micro-batch of {R} rows: the pipeline payload "
                             "carries one image per row (data.pack_tokens=0)")
        parts = [target.reshape(I, -1)]
        if self.cfg.head.latent_skip:
            parts.append(merge_patches(x_t, self.cfg.head.merge).reshape(I, -1))
        # the payload travels in the activation dtype (megatron's pipeline_dtype)
        per_image = torch.cat([q.to(h.dtype) for q in parts] + [t[:, None].to(h.dtype)], dim=1)
        P = payload_rows(self.cfg)
        per_image = nn.functional.pad(per_image, (0, P * H - per_image.shape[1]))
        flat = torch.cat([per_image, per_image.new_zeros(R - I, P * H)])  # column i: image i
        return h, flat.reshape(R, P, H).transpose(0, 1)                    # [P, R, H]

    def _heads(self, batch, h, payload, ntp_den, fm_den):
        """HydraModel.forward from the final norm on: both losses."""
        l_ntp, n_tok = ntp_loss(h, batch["labels"], self.llm_logits, ntp_den, batch.get("label_index"))
        R, S, H = h.shape
        vidx = batch["visual_index"]
        I, M = vidx.shape
        K = self.cfg.head.merge ** 2 * self.cfg.gsb.latent_channels
        n_lat = 2 if self.cfg.head.latent_skip else 1
        per_image = payload.transpose(0, 1).reshape(R, -1)[:I, :n_lat * M * K + 1]
        v_target, t = per_image[:, :M * K].reshape(I, M, K), per_image[:, n_lat * M * K]
        x_t = per_image[:, M * K:2 * M * K].reshape(I, M, K) if n_lat == 2 else None
        v_pred = self.flow_head(h.reshape(R * S, H)[vidx.clamp(min=0)], t, x_t)
        err = (v_pred.float() - v_target.float()).pow(2).mean(dim=(1, 2))
        w = batch["is_gen"].float() * batch["image_weight"].float()
        l_fm = (err * w).sum() / (w.sum().clamp(min=1.0) if fm_den is None else fm_den)
        loss = self.cfg.ntp_weight * l_ntp + self.cfg.fm_weight * l_fm
        return {"loss": loss, "ntp": l_ntp.detach(), "fm": l_fm.detach(),
                "ntp_tokens": n_tok.detach(), "fm_images": w.sum().detach()}

    def llm_logits(self, h_BSH):
        if self.llm.lm_head is None:
            # tied: at pp=1 this one chunk holds the embedding too (the config check refuses
            # tied embeddings with pp > 1, where first and last stage would have to share it)
            return tied_logits(h_BSH, self.llm.embed.weight)
        return self.llm.lm_head(h_BSH)[0]
