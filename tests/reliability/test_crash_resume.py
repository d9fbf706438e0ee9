"""Faults that kill a run: a rank SIGKILLed mid-training, a rank killed inside a checkpoint save,
and a save that fails with a full disk. Each time the previous checkpoint stays `latest`, and
re-running the same command resumes with the losses of an uninterrupted run."""
import datetime
import shutil
import subprocess
import sys
import time

import pytest

from common import TINY, assert_same_losses, latest, log_time, metrics
from launch import REPO, free_port, run_torchrun

ARGS = TINY + ["train.steps=6", "checkpoint.every=2", "checkpoint.keep_last=3"]


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("reference")
    # a grace period no save can meet: the warning must appear (the numbers do not change)
    res = run_torchrun(2, ARGS + [f"output_dir={run}", "checkpoint.grace_s=0.001"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "take longer than the preemption grace period checkpoint.grace_s = 0 s" in res.stdout
    return run


@pytest.fixture(scope="module")
def reference(reference_dir):
    return metrics(reference_dir)


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


def _kib(path) -> int:
    return int(subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare (mount namespace)")
def test_real_enospc_on_a_small_tmpfs_keeps_previous_and_resumes_exactly(tmp_path, reference_dir,
                                                                        reference):
    """A real full disk: the run folder is a tmpfs (private mount namespace) sized to hold the
    data and one checkpoint and a half, so the save of step 4 hits ENOSPC inside DeepSpeed's /
    torch's writer (a RuntimeError there, not an OSError). Then the tmpfs is grown and the same
    command resumes, inside the same namespace."""
    ck_kib = _kib(reference_dir / "checkpoints" / "step00000002")
    rest_kib = _kib(reference_dir) - _kib(reference_dir / "checkpoints")
    size_kib = rest_kib + ck_kib * 3 // 2 + 1024
    run, copy = tmp_path / "run", tmp_path / "copy"
    run.mkdir(), copy.mkdir()
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
              "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
              "-m", "hydra_dist.cli.pretrain", *ARGS, f"output_dir={run}"]
    cmd = " ".join(f"'{a}'" for a in launch)
    script = (f"mount -t tmpfs -o size={size_kib}k tmpfs {run} || exit 90; "
              f"{cmd} > {tmp_path}/first.log 2>&1; echo $? > {tmp_path}/first.rc; "
              f"df -k {run} > {tmp_path}/df.txt; cp -a {run}/. {copy}/; "
              f"mount -o remount,size=1g {run} || exit 91; "
              f"{cmd} > {tmp_path}/second.log 2>&1; echo $? > {tmp_path}/second.rc; "
              f"mkdir -p {copy}/after && cp -a {run}/. {copy}/after/")
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         cwd=REPO, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=900)
    if res.returncode == 90:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr[-3000:]
    first = (tmp_path / "first.log").read_text()
    assert int((tmp_path / "first.rc").read_text()) != 0, first[-4000:]
    ck = run / "checkpoints"
    assert f"checkpoint save of step 4 into {ck / '.tmp-step00000004'} failed on rank" in first, first[-5000:]
    assert "No space left on device" in first, first[-5000:]
    assert "RuntimeError" in first   # the real failure: torch.save's writer, not an injected OSError
    assert f"the latest complete checkpoint is still {ck / 'step00000002'}" in first
    assert latest(copy) == "step00000002"
    from hydra_dist.checkpoint.manager import verify
    assert verify(copy / "checkpoints" / "step00000002") is None
    second = (tmp_path / "second.log").read_text()
    assert int((tmp_path / "second.rc").read_text()) == 0, second[-4000:]
    assert f"resumed from {ck / 'step00000002'}" in second
    assert_same_losses(metrics(copy / "after"), reference)
    assert latest(copy / "after") == "step00000006"


def test_flipped_checkpoint_byte_is_refused_by_resume_and_export(tmp_path, reference_dir, capsys):
    """One byte flipped inside a model shard: same size, so only the manifest's xxh3-64 sees it.
    Resume and hydra-export-hf both refuse, naming the file; nothing is trained or written."""
    from hydra_dist.cli.export_hf import main as export_main
    run = tmp_path / "run"
    shutil.copytree(reference_dir, run)
    step = run / "checkpoints" / "step00000006"
    shard = max((p for p in step.rglob("*") if p.is_file() and p.suffix == ".pt"),
                key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x5A
    shard.write_bytes(bytes(data))
    rel = str(shard.relative_to(step))
    res = run_torchrun(2, ARGS + ["train.steps=8", f"output_dir={run}"], timeout=300)
    assert res.returncode != 0, res.stdout[-3000:]
    assert f"{rel} is corrupt" in res.stdout and "latest checkpoint is damaged" in res.stdout, res.stdout[-4000:]
    assert len(metrics(run)) == 6   # nothing trained on top of the corrupt state
    out = tmp_path / "hf"
    capsys.readouterr()
    assert export_main([str(run), str(out), "--no-progress"]) == 1
    assert f"{rel} is corrupt" in capsys.readouterr().err
    assert not out.exists()
