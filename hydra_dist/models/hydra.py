"""HYDRA: HYDRA-TOK's ViT (Gen-ViT -> GSB -> Sem-ViT) feeding a Qwen2.5 LLM with two heads.

Understanding: image -> Gen-ViT -> GSB mu (no noise) -> un-project -> Sem-ViT -> projector -> LLM.
Generation: mu is noised by rectified flow x_t = (1-t) mu + t eps, then the same path; the flow
head on the visual positions regresses v = eps - mu. L = ntp_weight L_NTP + fm_weight L_FM.
Every sample runs the full vision path (dummy images carry image_weight 0), so every rank issues
the same collectives every step.
"""
from __future__ import annotations

import torch
from torch import nn

from hydra_dist.config.schema import PARTS, ModelConfig  # noqa: F401  (PARTS re-exported)
from hydra_dist.ops.attention import make_mask, resolve_attention

from .gsb import GSB
from .heads import FlowHead, Projector, merge_patches
from .layers import mp_config
from .noise import flow_noise_cpu
from .llm import SEED_FLOW_HEAD, SEED_VISION, QwenLM, ntp_loss, seed_piece
from .vit import PatchEmbed, PrependToken, ViTStack, model_pixels


def shift_time(t, shift: float):
    """t -> s t / (1 + (s - 1) t): towards noise for s > 1 (model.time_shift); exact for s = 1."""
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def init_base_seed() -> int:
    # on the CPU generator even under `with torch.device("meta")` (shape-only builds)
    return int(torch.randint(0, 2 ** 62, (1,), device="cpu").item())


def build_vision(mp, cfg: ModelConfig):
    """(patch, gen_vit, gsb, sem_vit, projector) in this order (the order fixes their weights)."""
    v, std = cfg.vit, cfg.init_std
    depth = v.gen_layers + v.sem_layers
    return (PatchEmbed(v, std), ViTStack(mp, v, v.gen_layers, std, depth), GSB(cfg.gsb, v.hidden_size),
            ViTStack(mp, v, v.sem_layers, std, depth),
            Projector(mp, v.hidden_size, cfg.llm.hidden_size, cfg.head.merge, std))


def build_sem_cls(cfg: ModelConfig):
    """Sem-ViT's learned CLS with use_cls_token (InternViT), as in HYDRA-TOK; else None."""
    return PrependToken(cfg.vit.hidden_size) if cfg.vit.use_cls_token else None


def build_flow_head(cfg: ModelConfig) -> FlowHead:
    return FlowHead(cfg.llm.hidden_size, cfg.head.merge ** 2 * cfg.gsb.latent_channels,
                    cfg.head.flow_head_layers, cfg.head.flow_head_hidden, cfg.head.time_embed_dim,
                    cfg.head.latent_skip)


class HydraModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        mp = mp_config()
        std = cfg.init_std
        # One draw from the caller's seeded generator, then a seed per piece (llm.seed_piece):
        # pipeline stages that build only their pieces start from these same weights.
        init_base = init_base_seed()
        seed_piece(init_base, SEED_VISION)
        self.patch, self.gen_vit, self.gsb, self.sem_vit, self.projector = build_vision(mp, cfg)
        self.sem_cls = build_sem_cls(cfg)
        self.llm = QwenLM(mp, cfg.llm, std, init_base)
        seed_piece(init_base, SEED_FLOW_HEAD)
        self.flow_head = build_flow_head(cfg)
        self.apply_freeze(cfg.freeze)

    def attention_path(self) -> str:
        """Resolved per forward from the weights' dtype: DeepSpeed casts the model to bf16 after
        it is built, and flash-attn refuses fp32 (ops/attention.resolve_attention)."""
        return resolve_attention(self.cfg.attention, next(iter(self.parameters())).dtype)

    def part_modules(self) -> dict:
        sem = [self.sem_vit] + ([self.sem_cls] if self.sem_cls is not None else [])
        return {"gen_vit": [self.patch, self.gen_vit], "gsb": [self.gsb], "sem_vit": sem,
                "projector": [self.projector], "llm": [self.llm], "flow_head": [self.flow_head]}

    def apply_freeze(self, frozen) -> None:
        for name, mods in self.part_modules().items():
            for mod in mods:
                for p in mod.parameters():
                    p.requires_grad_(name not in frozen)

    def set_activation_checkpointing(self, on: bool) -> None:
        for m in (self.gen_vit, self.sem_vit, self.llm):
            m.checkpointing = on

    # --- pieces -------------------------------------------------------------------------
    def encode_latent(self, images_B3HW):
        """Clean GSB latent mu [B,N,C] (Gen-ViT -> W_proj, no sampling)."""
        frozen = not any(p.requires_grad for p in self.gen_vit.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            h_mid = self.gen_vit(self.patch(images_B3HW))
        # with a CLS token (InternViT) the GSB compresses the patch tokens only, as in HYDRA-TOK
        h_mid = h_mid[:, int(self.cfg.vit.use_cls_token):]
        mu, _, _, _ = self.gsb.encode(h_mid, sample=False)
        return mu

    def visual_tokens(self, latent_BNC):
        h = self.gsb.decode(latent_BNC)
        if self.sem_cls is not None:  # Sem-ViT sees its CLS; the LLM gets the patch tokens
            return self.projector(self.sem_vit(self.sem_cls(h))[:, 1:])
        return self.projector(self.sem_vit(h))

    def flow_noise(self, sample_ids_B, noise_seed: int, mu_BNC):
        """(t [B], eps [B,N,C]) for rectified flow, one generator per sample."""
        t, eps = flow_noise_cpu(sample_ids_B, noise_seed, mu_BNC.shape[1:], self.cfg.time_sampling)
        t = shift_time(t, self.cfg.time_shift)
        # fp32 on mu's device whatever the compute dtype: x_t and the target eps - mu are formed
        # in fp32, x_t is then cast to the compute dtype
        return t.to(mu_BNC.device, torch.float32), eps.to(mu_BNC.device, torch.float32)

    # --- training forward --------------------------------------------------------------
    def forward(self, batch: dict, noise_seed: int = 0, ntp_den=None, fm_den=None) -> dict:
        """ntp_den / fm_den: the loss denominators (labelled tokens, weighted generation samples).
        The trainer passes global counts / dp so that DeepSpeed's gradient averaging over DP
        yields the exact global per-token mean, whatever each rank's mix of tasks."""
        images = model_pixels(batch["images"], self.patch.proj.weight.dtype)
        mu = self.encode_latent(images)
        if not self.gsb.proj.weight.requires_grad:
            mu = mu.detach()  # flow target from a frozen tokenizer
        # Noise per sample from (step seed, sample id): identical on TP peers, independent of how
        # samples are split over DP ranks and micro-batches, reproducible on resume.
        t, eps = self.flow_noise(batch["sample_ids"], noise_seed, mu)
        is_gen = batch["is_gen"].float()
        t = t * is_gen
        tt = t[:, None, None]
        x_t = ((1 - tt) * mu.float() + tt * eps).to(mu.dtype)
        vis_BMH = self.visual_tokens(x_t)

        emb = self.llm.embed_tokens(batch["input_ids"])
        R, S, H = emb.shape
        vidx = batch["visual_index"]                      # [I, M] flat into R*S, -1 = dummy
        placed = vidx >= 0
        emb_flat = emb.reshape(R * S, H).index_copy(0, vidx[placed], vis_BMH[placed].to(emb.dtype))
        mask = make_mask(batch["segment_ids"], batch["image_ids"], self.attention_path())
        h = self.llm(emb_flat.reshape(R, S, H), mask, batch["position_ids"])

        l_ntp, n_tok = ntp_loss(h, batch["labels"], self.llm.logits, ntp_den, batch.get("label_index"))
        h_vis = h.reshape(R * S, H)[vidx.clamp(min=0)]    # [I, M, H]
        skip = merge_patches(x_t, self.cfg.head.merge) if self.cfg.head.latent_skip else None
        v_pred = self.flow_head(h_vis, t, skip)
        v_target = merge_patches(eps - mu.float(), self.cfg.head.merge)
        per_image = (v_pred.float() - v_target).pow(2).mean(dim=(1, 2))
        w = is_gen * batch["image_weight"].float()
        l_fm = (per_image * w).sum() / (w.sum().clamp(min=1.0) if fm_den is None else fm_den)
        # Unplaced (dummy) visual tokens join the graph with weight 0, so the vision tower's
        # parameters see a backward pass on every rank (ZeRO-3 reduce-scatters stay in step).
        l_fm = l_fm + 0.0 * vis_BMH[~placed].sum()
        loss = self.cfg.ntp_weight * l_ntp + self.cfg.fm_weight * l_fm
        return {"loss": loss, "ntp": l_ntp.detach(), "fm": l_fm.detach(),
                "ntp_tokens": n_tok.detach(), "fm_images": w.sum().detach()}
