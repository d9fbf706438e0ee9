"""Tokenizer FLOPs (student, pixel decoder, frozen teacher, discriminator, LPIPS trunk) against
FlopCounterMode on a tiny config, within 5%."""
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tokenizer"))
from tiny import images, tiny_cfg  # noqa: E402

from hydra_dist.perf.flops import lpips_trunk_fwd, tokenizer_flops  # noqa: E402


def count(fn) -> float:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


@pytest.mark.parametrize("stage", [1, 2])
def test_tokenizer_step_matches_flop_counter(single_process_mp, stage):
    from hydra_dist.models.tokenizer.discriminator import PatchDiscriminator
    from hydra_dist.models.tokenizer.losses import TokenizerObjective
    from hydra_dist.models.tokenizer.model import HydraTok, TeacherViT
    extra = ["tokenizer.stage=2", "tokenizer.weights.dist=0"] if stage == 2 else []
    cfg = tiny_cfg(*extra)
    torch.manual_seed(0)
    model = HydraTok(cfg)
    if stage == 2:
        model.set_encoder_trainable(False)
    teacher = TeacherViT(cfg.model.vit, cfg.model.init_std) if stage == 1 else None
    disc = PatchDiscriminator(cfg.tokenizer.gan)
    obj = TokenizerObjective(cfg, teacher, None)
    B = 3
    batch = {"images": images(B), "sample_ids": torch.arange(B)}

    def step():   # what the tokenizer task does per micro-batch
        out = model(batch, noise_seed=1, semantic=stage == 1)
        loss, _ = obj.generator(out, batch["images"], disc)
        loss.backward()
        obj.discriminator(disc, batch["images"], out["x0_pred"]).backward()
    rep = tokenizer_flops(cfg, B)
    assert rep.total == pytest.approx(count(step), rel=0.05), rep.parts
    assert ("teacher" in rep.parts) == (stage == 1)


@pytest.mark.parametrize("net,size", [("vgg", 32), ("alex", 64)])
def test_lpips_trunk(net, size):
    from hydra_dist.models.tokenizer.lpips import NETS, build_trunk
    trunk = build_trunk(net)
    taps, chans = NETS[net]
    x = torch.randn(2, 3, size, size)

    def fwd():
        h = x
        for i, layer in enumerate(trunk):
            h = layer(h)
            if i in taps:
                torch.nn.functional.conv2d(h, torch.zeros(1, h.shape[1], 1, 1))
            if i == taps[-1]:
                break
    assert lpips_trunk_fwd(net, 2, size) == pytest.approx(count(fwd), rel=0.05)
