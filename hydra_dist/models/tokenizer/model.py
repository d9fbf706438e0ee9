"""HYDRA-TOK (docs/design.md): patchify -> Gen-ViT -> GSB -> Sem-ViT, and mu -> pixel flow decoder.

The forward pass computes what needs the student's parameters (flow matching, GSB regulariser,
the hidden states to distil); losses with frozen networks of their own (teacher, LPIPS,
discriminator) are applied by losses.TokenizerObjective outside the engine.

CLS token (use_cls_token, InternViT): it runs through Gen-ViT with the patches; the GSB
compresses patch tokens only, and Sem-ViT gets a learned CLS (`sem_cls`) in front of H_bn. So
Sem-ViT's input is a function of the latent alone, as generation needs (no encoder side path).
"""
from __future__ import annotations

import torch
from torch import nn

from hydra_dist.config.schema import RunConfig, ViTConfig

from ..gsb import GSB
from ..hydra import build_sem_cls
from ..layers import mp_config
from ..noise import flow_noise_cpu
from ..vit import PatchEmbed, ViTStack
from .decoder import PixelFlowDecoder

ENCODER_PARTS = ("patch", "gen_vit", "gsb", "sem_vit", "sem_cls")


class HydraTok(nn.Module):
    def __init__(self, cfg: RunConfig):
        super().__init__()
        mp, v, t = mp_config(), cfg.model.vit, cfg.tokenizer
        std, depth = cfg.model.init_std, v.gen_layers + v.sem_layers
        self.vit_cfg, self.tok_cfg = v, t
        self.patch = PatchEmbed(v, std)
        self.gen_vit = ViTStack(mp, v, v.gen_layers, std, depth)
        self.gsb = GSB(cfg.model.gsb, v.hidden_size)
        self.sem_cls = build_sem_cls(cfg.model)
        self.sem_vit = ViTStack(mp, v, v.sem_layers, std, depth)
        self.decoder = PixelFlowDecoder(mp, t.decoder, v, cfg.model.gsb.latent_channels, std)
        self.cls = 1 if v.use_cls_token else 0

    def set_encoder_trainable(self, on: bool) -> None:
        for name in ENCODER_PARTS:
            mod = getattr(self, name)
            if mod is not None:
                mod.requires_grad_(on)

    def set_activation_checkpointing(self, on: bool) -> None:
        for m in (self.gen_vit, self.sem_vit, self.decoder):
            m.checkpointing = on

    # --- pieces -------------------------------------------------------------------------
    def encode(self, images_B3HW, *, sample: bool = False, noise_seed: int = 0, sample_ids=None):
        """-> h_mid (patch tokens) [B,N,D], Gen-ViT hidden list (with CLS), mu, logvar, z, kl [B,N]."""
        h_mid, hidden = self.gen_vit(self.patch(images_B3HW), return_all=True)
        h_mid = h_mid[:, self.cls:]
        if not sample:
            mu, logvar, z, kl = self.gsb.encode(h_mid, sample=False)
        else:  # one GSB noise stream per sample (offset = sample id): layout independent
            parts = [self.gsb.encode(h_mid[i:i + 1], sample=True, seed=noise_seed, offset=int(sid))
                     for i, sid in enumerate(sample_ids.tolist())]
            mu, logvar, z, kl = (torch.cat(x) for x in zip(*parts))
        return h_mid, hidden, mu, logvar, z, kl

    def semantic(self, mu_BNC):
        """H_bn = W_unproj mu, then Sem-ViT: -> (H_bn [B,N,D], Sem-ViT hidden list)."""
        h_bn = self.gsb.decode(mu_BNC)
        x = self.sem_cls(h_bn) if self.sem_cls is not None else h_bn
        _, hidden = self.sem_vit(x, return_all=True)
        return h_bn, hidden

    def flow_noise(self, sample_ids_B, noise_seed: int, like_B3HW):
        """(t [B], eps [B,3,H,W]) per sample."""
        t, eps = flow_noise_cpu(sample_ids_B, noise_seed, like_B3HW.shape[1:], self.tok_cfg.time_sampling)
        # fp32 on the image's device: the flow target eps - x is formed in fp32 under bf16
        return t.to(like_B3HW.device, torch.float32), eps.to(like_B3HW.device, torch.float32)

    # --- training forward --------------------------------------------------------------
    def encode_for_decoder(self, batch: dict, noise_seed: int, semantic: bool):
        """The encoder side of a training step (shared with the pipeline's first stage):
        -> (images, {gen_hidden, sem_hidden, mu, z, reg, kl, cos, t, eps, x_t})."""
        x = batch["images"].to(self.patch.proj.weight.dtype)
        ids = batch["sample_ids"]
        enc_frozen = not self.gsb.proj.weight.requires_grad
        with torch.set_grad_enabled(torch.is_grad_enabled() and not enc_frozen):
            h_mid, gen_hidden, mu, logvar, z, kl = self.encode(
                x, sample=self.tok_cfg.decoder_condition == "z", noise_seed=noise_seed, sample_ids=ids)
            h_bn, sem_hidden = self.semantic(mu) if semantic else (self.gsb.decode(mu), [])
            l_reg, l_kl, l_cos = self.gsb.reg_loss(h_mid, h_bn, kl)
        t, eps = self.flow_noise(ids, noise_seed + 1, x)
        tt = t[:, None, None, None]
        return x, {"gen_hidden": gen_hidden, "sem_hidden": sem_hidden, "mu": mu, "z": z,
                   "reg": l_reg, "kl": l_kl, "cos": l_cos, "t": t, "eps": eps,
                   "x_t": ((1 - tt) * x.float() + tt * eps).to(x.dtype)}

    def forward(self, batch: dict, noise_seed: int = 0, semantic: bool = True) -> dict:
        """Flow matching and GSB regulariser on a batch {images [B,3,H,W] in [-1,1], sample_ids [B]}.
        semantic: also run Sem-ViT (its hidden states are only needed for distillation)."""
        x, e = self.encode_for_decoder(batch, noise_seed, semantic)
        gen_hidden, sem_hidden, mu, z = e["gen_hidden"], e["sem_hidden"], e["mu"], e["z"]
        l_reg, l_kl, l_cos, t, eps, x_t = e["reg"], e["kl"], e["cos"], e["t"], e["eps"], e["x_t"]
        tt = t[:, None, None, None]
        v_pred = self.decoder(x_t, t, z)
        l_fm = (v_pred.float() - (eps - x.float())).pow(2).mean()
        return {"fm": l_fm, "reg": l_reg, "kl": l_kl.detach(), "cos": l_cos.detach(),
                "x0_pred": x_t - tt * v_pred, "v_pred": v_pred, "t": t, "eps": eps, "x_t": x_t,
                "mu": mu, "z": z, "hidden": gen_hidden + sem_hidden}


class TeacherViT(nn.Module):
    """The frozen teacher: the same ViT, undivided (Gen-ViT blocks then Sem-ViT blocks)."""

    def __init__(self, v: ViTConfig, std: float):
        super().__init__()
        mp, depth = mp_config(), v.gen_layers + v.sem_layers
        self.vit_cfg = v
        self.patch = PatchEmbed(v, std)
        self.vit = ViTStack(mp, v, depth, std, depth)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, images_B3HW):
        return self.vit(self.patch(images_B3HW.to(self.patch.proj.weight.dtype)), return_all=True)[1]

    def load_from_student(self, student: HydraTok) -> None:
        """Copy the student's (initial) ViT: patch, Gen-ViT blocks, Sem-ViT blocks."""
        sd = {f"patch.{k}": val for k, val in student.patch.state_dict().items()}
        blocks = list(student.gen_vit.blocks) + list(student.sem_vit.blocks)
        for i, blk in enumerate(blocks):
            sd.update({f"vit.blocks.{i}.{k}": val for k, val in blk.state_dict().items()})
        self.load_state_dict(sd, strict=True)
