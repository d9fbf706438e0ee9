"""The analytic FLOPs model against torch's FlopCounterMode on tiny configs (within 5%), and the
layout-aware attention pair count against the dense mask it stands for."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from batches import tiny_batch
from hydra_dist.config import load_config
from hydra_dist.ops.attention import build_mask
from hydra_dist.perf.flops import attention_pairs, step_flops, unified_flops


def counted(fn) -> float:
    # MATH backend: SDPA decomposes into bmm, which the counter sees (the CPU fused kernel it
    # does not count at all)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


@pytest.mark.parametrize("overrides,pack", [
    ([], 0),
    (["model.freeze=[gen_vit]"], 0),
    (["model.freeze=[]"], 160),
    (["model.freeze=[gen_vit,gsb,sem_vit]", "model.llm.tie_word_embeddings=true"], 160),
])
def test_unified_matches_flop_counter(single_process_mp, overrides, pack):
    from hydra_dist.models.hydra import HydraModel
    cfg = load_config("configs/model/tiny.yaml", overrides)
    batch = tiny_batch(cfg, 5, pack_tokens=pack, text_every=4)
    torch.manual_seed(0)
    model = HydraModel(cfg.model)

    def run():
        model(batch, noise_seed=1)["loss"].backward()
    measured = counted(run)
    rep = unified_flops(cfg, batch, attention="dense")
    assert rep.total == pytest.approx(measured, rel=0.05), (rep.parts, measured)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(batch, noise_seed=1)
    assert rep.fwd == pytest.approx(fc.get_total_flops(), rel=0.05)


def test_attention_pairs_match_mask():
    cfg = load_config("configs/model/tiny.yaml")
    batch = tiny_batch(cfg, 7, pack_tokens=200, text_every=3)
    seg, img = batch["segment_ids"], batch["image_ids"]
    mask = build_mask(seg, img)[:, 0] & (seg > 0)[:, :, None]   # real queries only
    assert attention_pairs(seg, img) == float(mask.sum())


def test_layout_counts_less_than_dense_and_is_cheap():
    import time
    cfg = load_config("configs/model/hydra_1.5b.yaml")
    batch = {"images": torch.zeros(8, 1, 1, 1), "input_ids": torch.zeros(2, 4096, dtype=torch.long),
             "segment_ids": torch.repeat_interleave(torch.arange(1, 9), 1024).view(2, 4096),
             "image_ids": torch.zeros(2, 4096, dtype=torch.long)}
    t0 = time.perf_counter()
    f = step_flops(cfg, batch)
    assert time.perf_counter() - t0 < 0.05
    dense = unified_flops(cfg, batch, attention="dense").total
    assert f < dense
    # 6 N T rule of thumb for the LLM part (trainable params x tokens), within 25%
    n_llm = 1.54e9
    assert unified_flops(cfg, batch).parts["llm"].total + unified_flops(cfg, batch).parts["lm_head"].total \
        == pytest.approx(6 * n_llm * 8192, rel=0.25)


def test_mfu_counts_useful_work_packed_or_padded():
    """The same samples padded (one per row) or packed give the same layout FLOPs: padding
    positions are not counted (the trainer reports their share as padding_share), while the
    dense count of what runs is larger for the padded batch."""
    cfg = load_config("configs/model/tiny.yaml")
    padded = tiny_batch(cfg, 7, pack_tokens=0, text_every=3)
    packed = tiny_batch(cfg, 7, pack_tokens=160, text_every=3)
    assert padded["segment_ids"].shape != packed["segment_ids"].shape
    assert padded["segment_ids"].eq(0).any()          # rows padded to the longest sample
    assert padded["segment_ids"].gt(0).sum() == packed["segment_ids"].gt(0).sum()
    assert step_flops(cfg, padded) == pytest.approx(step_flops(cfg, packed), rel=1e-12)
    assert unified_flops(cfg, padded, attention="dense").total > step_flops(cfg, padded)

