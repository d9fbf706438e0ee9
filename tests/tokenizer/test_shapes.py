"""The paper-size config builds on the meta device; its parameter count next to the paper's."""
import pytest
import torch

from hydra_dist.config import load_config


def test_hydra_tok_300m_on_meta(megatron_tp1, capsys):
    from hydra_dist.models.tokenizer import HydraTok
    cfg = load_config("configs/tokenizer/stage1_foundation.yaml")
    v = cfg.model.vit
    assert (v.gen_layers, v.sem_layers, v.hidden_size, v.num_heads, v.mlp_size, v.patch_size,
            v.image_size, cfg.model.gsb.latent_channels) == (12, 12, 1024, 16, 4096, 14, 448, 64)
    with torch.device("meta"):
        m = HydraTok(cfg)
    count = lambda mods: sum(p.numel() for mod in mods for p in mod.parameters())  # noqa: E731
    vit = count([m.patch, m.gen_vit, m.sem_vit, m.sem_cls])
    gsb, dec = count([m.gsb]), count([m.decoder])
    with capsys.disabled():
        print(f"\nHYDRA-TOK 300m: ViT {vit / 1e6:.1f}M (paper: InternViT-300M), GSB {gsb / 1e6:.2f}M, "
              f"pixel decoder {dec / 1e6:.1f}M (paper: 144M / 241M / 358M), "
              f"total {(vit + gsb + dec) / 1e6:.1f}M")
    assert 290e6 < vit < 320e6           # InternViT-300M: 304M with its CLS/positions
    assert gsb == 1024 * 128 + 128 + 64 * 1024 + 1024
    assert 130e6 < dec < 160e6


def test_frechet_distance():
    from hydra_dist.models.tokenizer.recon_eval import frechet_distance
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    b = a * 2.0 + 1.0   # mean 1, cov 4 I: FID = 3 * 1 + tr(I + 4I - 2 * 2I) = 3 + 3 = 6
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)
