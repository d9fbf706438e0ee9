"""NaN/Inf losses (train.inject_nan_at_steps): the step is skipped on every rank and counted,
training goes on, and too many in a row save and stop with a clear error. With grad_accum=2 the
NaN hits the second micro-batch (HYDRA_FAULT nan_micro=1), after the first one's gradients were
accumulated: the guard must discard them, so the run equals one where the NaN hit micro-batch 0."""
import math

import torch

from common import TINY, LOSS_KEYS, assert_same_losses, latest, metrics
from launch import run_torchrun

GA2 = TINY + ["parallel.grad_accum=2", "parallel.micro_batch_size=2"]


def _global_steps(run, tag):
    folder = run / "checkpoints" / tag
    # ZeRO-3 names the file per DP rank; ZeRO-0/1/2 write one mp_rank file
    f = folder / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    f = f if f.is_file() else folder / "mp_rank_00_model_states.pt"
    from hydra_dist.export.ds_reader import _ds_safe_globals
    with torch.serialization.safe_globals(_ds_safe_globals()):
        sd = torch.load(f, map_location="cpu", weights_only=True)
    return sd["global_steps"]


def _check_skipped(ms, nan_steps):
    for m in ms:
        if m["step"] in nan_steps:
            assert all(math.isnan(m[k]) for k in LOSS_KEYS), m
        else:
            assert all(math.isfinite(m[k]) for k in LOSS_KEYS), m
        assert m["skipped_steps"] == sum(s <= m["step"] for s in nan_steps)


def test_nan_on_second_micro_batch_zero3_discards_accumulated_grads(tmp_path):
    args = GA2 + ["parallel.zero_stage=3", "train.steps=5", "checkpoint.every=5",
                  "train.inject_nan_at_steps=[3]"]
    runs = {}
    for micro in (0, 1):
        run = tmp_path / f"micro{micro}"
        res = run_torchrun(2, args + [f"output_dir={run}"], timeout=400,
                           env={"HYDRA_FAULT": f"nan_micro={micro}"})
        assert res.returncode == 0, res.stdout[-4000:]
        assert "step 3: non-finite loss on some rank; step skipped (1 in a row, 1 total)" in res.stdout
        runs[micro] = metrics(run)
        _check_skipped(runs[micro], {3})
        assert _global_steps(run, latest(run)) == 4     # 5 steps, 1 skipped: 4 optimizer steps
    finite = [{**m, **{k: 0.0 for k in LOSS_KEYS}} if m["step"] == 3 else m for m in runs[1]]
    ref = [{**m, **{k: 0.0 for k in LOSS_KEYS}} if m["step"] == 3 else m for m in runs[0]]
    assert_same_losses(finite, ref)


def test_nan_zero1_grad_accum_then_too_many_in_a_row_saves_and_stops(tmp_path):
    run = tmp_path / "run"
    args = GA2 + ["parallel.zero_stage=1", "train.steps=8", "checkpoint.every=10",
                  "train.inject_nan_at_steps=[3,5,6]", "train.max_skipped_in_row=2",
                  f"output_dir={run}"]
    res = run_torchrun(2, args, timeout=400, env={"HYDRA_FAULT": "nan_micro=1"})
    assert res.returncode != 0, res.stdout[-4000:]
    assert "training stopped at step 6: 2 non-finite steps in a row (checkpoint saved" in res.stdout
    ms = metrics(run)
    assert [m["step"] for m in ms] == [1, 2, 3, 4, 5, 6]
    _check_skipped(ms, {3, 5, 6})
    assert latest(run) == "step00000006"
    assert _global_steps(run, "step00000006") == 3
    # ZeRO-1 optimizer states load through the safe (weights_only) loader used on resume
    from hydra_dist.checkpoint.manager import _safe_torch_load
    for f in (run / "checkpoints" / "step00000006").glob("*optim_states.pt"):
        assert "optimizer_state_dict" in _safe_torch_load(str(f), map_location="cpu")
