"""Packing changes where samples sit, not what the model computes: the same samples collated
packed (several per row, segment ids, positions restarting per sample) and unpacked (one per
row) give the same NTP, FM and total loss and the same gradients. The LM head's labelled rows
and the flow head's images are the same set either way."""
import pytest
import torch

from hydra_dist.config import load_config


def _batch(cfg, pack_tokens):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parents[1] / "perf"))
    from batches import tiny_batch
    return tiny_batch(cfg, 7, pack_tokens=pack_tokens, text_every=3)


@pytest.mark.parametrize("attention", ["reference", "emulated"])
def test_packed_batch_gives_the_unpacked_loss(attention, megatron_tp1):
    from hydra_dist.models.hydra import HydraModel
    cfg = load_config("configs/model/tiny.yaml", [f"model.attention={attention}", "model.freeze=[]"])
    unpacked, packed = _batch(cfg, 0), _batch(cfg, 160)
    assert packed["input_ids"].shape[0] < unpacked["input_ids"].shape[0]   # really packed
    assert torch.equal(packed["is_gen"], unpacked["is_gen"])
    torch.manual_seed(0)
    model = HydraModel(cfg.model)
    res = []
    for b in (unpacked, packed):
        model.zero_grad(set_to_none=True)
        out = model(b, noise_seed=4)
        out["loss"].backward()
        res.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (u, gu), (p, gp) = res
    assert int(u["ntp_tokens"]) == int(p["ntp_tokens"]) > 0
    for k in ("loss", "ntp", "fm"):
        torch.testing.assert_close(p[k], u[k], rtol=1e-5, atol=1e-6, msg=k)
    assert gu.keys() == gp.keys()
    for n in gu:
        torch.testing.assert_close(gp[n], gu[n], rtol=1e-4, atol=1e-6, msg=n)
