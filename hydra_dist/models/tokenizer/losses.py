"""The tokenizer objective (docs/design.md):
  L_tok = w_fm L_FM + w_lpips L_lpips + w_gan L_gan + w_reg L_reg + w_dist L_dist
with the paper's weights 1, 0.1, 0.075, 1, 1 by default (config tokenizer.weights).
L_FM and L_reg come from HydraTok.forward; this module adds the terms that use networks of
their own (frozen teacher, frozen LPIPS, the discriminator) on the engine's outputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hydra_dist.config.schema import RunConfig

from .discriminator import d_loss, g_loss


def distill_loss(student_hidden, teacher_hidden, layers, skip_tokens: int = 0):
    """sum over l in layers of mean_tokens (1 - cos(H_l, T_l)); CLS tokens (skip_tokens) excluded.
    -> (total, [per-layer values])."""
    per = [(1.0 - F.cosine_similarity(student_hidden[l][:, skip_tokens:].float(),
                                      teacher_hidden[l][:, skip_tokens:].float(), dim=-1)).mean()
           for l in layers]
    return torch.stack(per).sum(), per


class TokenizerObjective(nn.Module):
    """Holds the frozen helpers (teacher, LPIPS); the discriminator is passed per call because
    it has an optimizer and a schedule of its own."""

    def __init__(self, cfg: RunConfig, teacher=None, lpips=None):
        super().__init__()
        self.w, self.t = cfg.tokenizer.weights, cfg.tokenizer
        self.skip = 1 if cfg.model.vit.use_cls_token else 0
        self.teacher, self.lpips = teacher, lpips
        if self.w.dist > 0 and teacher is None:
            raise ValueError("tokenizer.weights.dist > 0 needs a teacher")
        if self.w.lpips > 0 and lpips is None:
            raise ValueError("tokenizer.weights.lpips > 0 needs the LPIPS network (weight files)")

    def generator(self, out: dict, images, disc=None) -> tuple[torch.Tensor, dict]:
        """Loss for the engine's backward and its parts (detached floats for logging).
        disc: the discriminator when the GAN term is active this step, else None."""
        w, zero = self.w, out["fm"].new_zeros(())
        parts = {"fm": out["fm"], "reg": out["reg"]}
        if w.dist > 0:
            parts["dist"], _ = distill_loss(out["hidden"], self.teacher(images), self.t.distill_layers,
                                            self.skip)
        if w.lpips > 0:
            parts["lpips"] = self.lpips(out["x0_pred"].float(), images.float()).mean()
        if w.gan > 0 and disc is not None:
            disc.requires_grad_(False)   # the generator step must not train the discriminator
            parts["gan_g"] = g_loss(self.t.gan.loss, disc(out["x0_pred"].float()))
            disc.requires_grad_(True)
        loss = (w.fm * parts["fm"] + w.reg * parts["reg"] + w.dist * parts.get("dist", zero)
                + w.lpips * parts.get("lpips", zero) + w.gan * parts.get("gan_g", zero))
        metrics = {k: float(v.detach()) for k, v in parts.items()}
        metrics.update(kl=float(out["kl"]), cos=float(out["cos"]))
        return loss, metrics

    def discriminator(self, disc, images, x0_pred) -> torch.Tensor:
        return d_loss(self.t.gan.loss, disc(images.float()), disc(x0_pred.detach().float()))
