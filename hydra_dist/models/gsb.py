"""Generation-Semantic Bottleneck, exactly as docs/design.md describes:
[mu, logvar] = H_mid W_proj; z = mu + eps*exp(logvar/2); H_bn = mu W_unproj;
L_reg = kl_weight * L_KL + cos_weight * (1 - cos(H_mid, H_bn)).
"""
from __future__ import annotations

from torch import nn

from hydra_dist.config.schema import GSBConfig
from hydra_dist.ops.gsb import gsb_cosine_loss, gsb_reparam_kl


class GSB(nn.Module):
    def __init__(self, g: GSBConfig, hidden: int):
        super().__init__()
        self.cfg = g
        self.proj = nn.Linear(hidden, 2 * g.latent_channels)     # W_proj: D -> 2C
        self.unproj = nn.Linear(g.latent_channels, hidden)       # W_unproj: C -> D

    def encode(self, h_mid_BND, *, sample: bool, seed: int = 0, offset: int = 0):
        """-> (mu, logvar, z, kl per token)."""
        g = self.cfg
        return gsb_reparam_kl(self.proj(h_mid_BND), seed=seed, offset=offset,
                              logvar_min=g.logvar_min, logvar_max=g.logvar_max,
                              sample=sample, impl=g.kernel)

    def decode(self, latent_BNC):
        return self.unproj(latent_BNC)

    def reg_loss(self, h_mid_BND, h_bn_BND, kl_BN):
        """Tokenizer regulariser; returns (L_reg, L_KL, L_cos) as means over tokens."""
        l_kl = kl_BN.float().mean()  # loss reductions in fp32 under bf16 compute
        l_cos = gsb_cosine_loss(h_mid_BND, h_bn_BND, impl=self.cfg.kernel).float().mean()
        return self.cfg.kl_weight * l_kl + self.cfg.cos_weight * l_cos, l_kl, l_cos
