"""Faults that kill a run: a rank SIGKILLed mid-training, a rank killed inside a checkpoint save,
and a save that fails with a full disk. Each time the previous checkpoint stays `latest`, and
re-running the same command resumes with the losses of an uninterrupted run."""
import datetime
import time

import pytest

from common import TINY, assert_same_losses, latest, log_time, metrics
from launch import run_torchrun

ARGS = TINY + ["train.steps=6", "checkpoint.every=2", "checkpoint.keep_last=3"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("reference")
    res = run_torchrun(2, ARGS + [f"output_dir={run}"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    return metrics(run)


def _resume_matches(run, reference, from_tag):
    res = run_torchrun(2, ARGS + [f"output_dir={run}"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    assert f"resumed from {run / 'checkpoints' / from_tag}" in res.stdout
    assert_same_losses(metrics(run), reference)   # metrics.jsonl was trimmed to the resumed step
    assert latest(run) == "step00000006"
    assert not list((run / "checkpoints").glob(".tmp-step*"))   # stale partial saves removed


def test_kill_rank_mid_training_stops_and_resumes_exactly(tmp_path, reference):
    run = tmp_path / "run"
    res = run_torchrun(2, ARGS + [f"output_dir={run}"], timeout=300,
                       env={"HYDRA_FAULT": "kill_rank=1,at_step=5"})
    ended = datetime.datetime.now()
    assert res.returncode != 0, res.stdout[-4000:]
    killed = log_time(res.stdout, r"rank 1 kills itself")
    # The survivor exits within parallel.timeout_s (or torchrun tears the group down first),
    # plus torchrun's grace period before SIGKILL.
    assert (ended - killed).total_seconds() < 30 + 35, res.stdout[-3000:]
    assert [m["step"] for m in metrics(run)] == [1, 2, 3, 4]
    assert latest(run) == "step00000004"
    _resume_matches(run, reference, "step00000004")


def test_kill_during_checkpoint_save_keeps_previous_latest(tmp_path, reference):
    from hydra_dist.checkpoint.manager import CheckpointManager, verify
    run = tmp_path / "run"
    res = run_torchrun(2, ARGS + [f"output_dir={run}"], timeout=300,
                       env={"HYDRA_FAULT": "kill_rank=0,in_save_at_step=4"})
    assert res.returncode != 0, res.stdout[-4000:]
    assert "rank 0 kills itself (SIGKILL) while saving" in res.stdout
    ck = run / "checkpoints"
    assert (ck / ".tmp-step00000004").is_dir()          # the half-written save is left behind
    assert latest(run) == "step00000002"
    assert CheckpointManager(ck, 3, 0).latest() == "step00000002"   # ignores the .tmp folder
    assert verify(ck / "step00000002") is None
    _resume_matches(run, reference, "step00000002")


def test_disk_full_during_save_names_folder_and_keeps_previous(tmp_path, reference):
    run = tmp_path / "run"
    t0 = time.monotonic()
    res = run_torchrun(2, ARGS + [f"output_dir={run}"], timeout=300,
                       env={"HYDRA_FAULT": "fail_save_at_step=4"})
    assert res.returncode != 0, res.stdout[-4000:]
    ck = run / "checkpoints"
    out = res.stdout
    assert f"checkpoint save of step 4 into {ck / '.tmp-step00000004'} failed on rank" in out, out[-4000:]
    assert "No space left on device" in out
    assert f"the latest complete checkpoint is still {ck / 'step00000002'}" in out
    assert "(tp 0, pp 0, dp 0) failed during checkpoint save" in out
    assert time.monotonic() - t0 < 250
    assert latest(run) == "step00000002"
    _resume_matches(run, reference, "step00000002")
