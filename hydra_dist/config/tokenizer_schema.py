"""Config of HYDRA-TOK training (task: tokenizer): pixel decoder, losses, teacher, stages.
Owned by hydra_dist/models/tokenizer and hydra_dist/train/tasks/tokenizer.py.

The ViT and GSB shapes come from `model.vit` / `model.gsb` (shared with the unified model).
Loss weights default to the paper's: L_tok = L_FM + 0.1 L_lpips + 0.075 L_gan + L_reg + 1.0 L_dist.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal


@dataclass
class DecoderConfig:
    """Pixel flow decoder v_theta(x_t, t, latent): a DiT-style transformer on pixel patches
    (the ViT's patch grid, one latent per patch)."""
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_size: int = 512
    time_embed_dim: int = 128


@dataclass
class LossWeights:
    fm: float = 1.0
    lpips: float = 0.1
    gan: float = 0.075
    reg: float = 1.0      # multiplies GSB.reg_loss = kl_weight * L_KL + cos_weight * L_cos
    dist: float = 1.0


@dataclass
class LPIPSConfig:
    """LPIPS needs pretrained weights that are never downloaded: give both files."""
    net: Literal["vgg", "alex"] = "vgg"
    # torchvision state dict of vgg16 / alexnet (only `features.*` is read)
    trunk_weights: str = ""
    # the LPIPS linear layers (the `lpips` package's weights/v0.1/<net>.pth: lin0..lin4)
    lin_weights: str = ""


@dataclass
class GANConfig:
    """Patch discriminator; trained by a plain torch AdamW, grads averaged over DP
    (it is small and replicated: no ZeRO needed)."""
    loss: Literal["hinge", "non_saturating"] = "hinge"
    start_step: int = 0   # generator GAN term and discriminator updates from this step on
    lr: float = 1e-4
    betas: List[float] = field(default_factory=lambda: [0.5, 0.9])
    channels: int = 64
    num_layers: int = 3


@dataclass
class TokenizerConfig:
    # Stage 1 (foundation): encoder + decoder end to end with distillation;
    # stage 2 (decoder refinement): encoder (patch, Gen-ViT, GSB, Sem-ViT) frozen, no
    # distillation, GAN on.
    stage: int = 1
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    weights: LossWeights = field(default_factory=LossWeights)
    lpips: LPIPSConfig = field(default_factory=LPIPSConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    # Blocks distilled against the teacher, 0-based over Gen-ViT then Sem-ViT blocks.
    distill_layers: List[int] = field(default_factory=lambda: [1, 3])
    # Student init: an InternViT checkpoint (transformers InternVLVisionModel folder or
    # .safetensors/.bin) for the ViT, or a tokenizer.pt from an earlier stage (whole tokenizer).
    init_from: str = ""
    # Teacher (frozen ViT): an InternViT checkpoint; empty: a copy of the student's initial ViT.
    teacher_from: str = ""
    # What the decoder sees while training: z (reparameterised sample) or mu; eval always uses mu.
    decoder_condition: Literal["z", "mu"] = "z"
    time_sampling: Literal["uniform", "logit_normal"] = "logit_normal"
    ode_steps: int = 25        # Euler steps of the sampler (eval, grids)
    eval_images: int = 8       # held-out synthetic images for the end-of-run PSNR / grid (0: none)


def check_tokenizer(cfg) -> list[tuple[str, str]]:
    """Errors of the tokenizer section (only when task == tokenizer)."""
    t, v, errs = cfg.tokenizer, cfg.model.vit, []

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            errs.append((key, why))

    depth = v.gen_layers + v.sem_layers
    need(t.stage in (1, 2), "tokenizer.stage", f"{t.stage} is not 1 or 2")
    need(v.gen_layers >= 1, "model.vit.gen_layers", "the tokenizer needs at least one Gen-ViT block")
    for i, layer in enumerate(t.distill_layers):
        need(0 <= layer < depth, f"tokenizer.distill_layers[{i}]",
             f"{layer} is not a block index in [0, {depth})")
    need(not (t.stage == 2 and t.weights.dist > 0), "tokenizer.weights.dist",
         "stage 2 freezes the encoder: distillation must be off (0)")
    need(not (t.weights.dist > 0 and not t.distill_layers), "tokenizer.distill_layers",
         "empty while tokenizer.weights.dist > 0")
    if t.weights.lpips > 0:
        for k in ("trunk_weights", "lin_weights"):
            need(bool(getattr(t.lpips, k)), f"tokenizer.lpips.{k}",
                 "LPIPS is on (tokenizer.weights.lpips > 0) but no weight file is given; "
                 "pretrained weights are never downloaded (set the path, or weights.lpips=0)")
    d = t.decoder
    need(d.hidden_size % d.num_heads == 0, "tokenizer.decoder.num_heads",
         f"hidden_size {d.hidden_size} is not divisible by {d.num_heads} heads")
    need(cfg.parallel.tp == 1 or d.num_heads % cfg.parallel.tp == 0, "tokenizer.decoder.num_heads",
         f"{d.num_heads} heads are not divisible by parallel.tp={cfg.parallel.tp}")
    need(len(t.gan.betas) == 2, "tokenizer.gan.betas", f"needs 2 values, got {len(t.gan.betas)}")
    need(t.ode_steps >= 1, "tokenizer.ode_steps", "must be >= 1")
    return errs
