"""HydraModel.flow_noise draws exactly what a fresh generator per sample draws (resume and DP-split
reproducibility depend on it): the guard for any faster rewrite of its per-sample loop."""
import pytest
import torch

from hydra_dist.config import load_config


def reference(ids, seed, shape, logit_normal):
    ts, epss = [], []
    for sid in ids:
        gen = torch.Generator().manual_seed(hash((int(seed), int(sid))) % (2 ** 62))
        z = torch.randn(1, generator=gen)
        ts.append(torch.sigmoid(z) if logit_normal else torch.rand(1, generator=gen))
        epss.append(torch.randn(shape, generator=gen))
    return torch.cat(ts), torch.stack(epss)


@pytest.mark.parametrize("sampling", ["logit_normal", "uniform"])
def test_flow_noise_matches_per_sample_generators(single_process_mp, sampling):
    from hydra_dist.models.hydra import HydraModel
    cfg = load_config("configs/model/tiny.yaml", [f"model.time_sampling={sampling}"])
    model = HydraModel(cfg.model)
    ids = torch.tensor([7, -1, 123456, 3])
    mu = torch.zeros(4, 64, 16)
    t, eps = model.flow_noise(ids, 99, mu)
    rt, reps = reference(ids.tolist(), 99, (64, 16), sampling == "logit_normal")
    assert torch.equal(t, rt) and torch.equal(eps, reps)


def test_time_shift_moves_draws_towards_noise(single_process_mp):
    """model.time_shift s: t -> s t / (1 + (s - 1) t) on the same draws (logit(t) + log s)."""
    from hydra_dist.models.hydra import HydraModel
    cfg = load_config("configs/model/tiny.yaml", ["model.time_sampling=uniform", "model.time_shift=4"])
    ids = torch.arange(64)
    t, eps = HydraModel(cfg.model).flow_noise(ids, 5, torch.zeros(64, 64, 16))
    rt, reps = reference(ids.tolist(), 5, (64, 16), False)
    assert torch.equal(eps, reps)
    torch.testing.assert_close(torch.logit(t), torch.logit(rt) + torch.log(torch.tensor(4.0)))
    assert (t > rt).all() and t.max() < 1


def test_time_shift_must_be_positive():
    with pytest.raises(Exception, match="model.time_shift"):
        load_config("configs/model/tiny.yaml", ["model.time_shift=0"])
