"""Signals sent from outside, by PID, to `hydra-pretrain --nproc-per-node 2` (the launcher) and
to one of its ranks: every rank checkpoints at the next step boundary, the job exits 0 (a
preemption, docs/reliability.md), no process is left behind, and re-running the same command
resumes with the losses of an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from common import TINY, assert_same_losses, latest, metrics
from launch import REPO, run_torchrun

ARGS = TINY + ["train.steps=8", "checkpoint.every=100", "checkpoint.keep_last=2",
               "tracking.enabled=false"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("reference")
    res = run_torchrun(2, ARGS + [f"output_dir={run}"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    return metrics(run)


def launcher(run):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_RESIGNAL_S": "5"}
    return subprocess.Popen([sys.executable, "-m", "hydra_dist.cli.pretrain", "--nproc-per-node", "2",
                             *ARGS, f"output_dir={run}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_step(run, proc, step: int, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        f = run / "metrics.jsonl"
        if f.is_file() and len([ln for ln in f.read_text().splitlines() if ln.strip()]) >= step:
            return
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def ranks_of(proc) -> list:
    """The rank processes: children of torchrun, the launcher's child."""
    (torchrun,) = psutil.Process(proc.pid).children()
    return torchrun.children()


@pytest.mark.slow  # ~3 min: kept out of CI for time (README, Tests)
@pytest.mark.parametrize("target,sig", [("launcher", signal.SIGTERM), ("launcher", signal.SIGUSR1),
                                        ("rank", signal.SIGUSR1)])
def test_signal_checkpoints_exits_zero_and_resumes_exactly(tmp_path, reference, target, sig):
    run = tmp_path / "run"
    proc = launcher(run)
    wait_for_step(run, proc, 2)
    everyone = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    pid = proc.pid if target == "launcher" else ranks_of(proc)[1].pid
    os.kill(pid, sig)
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, out[-5000:]
    assert "will checkpoint and stop at the next step boundary" in out, out[-4000:]
    stopped = len(metrics(run))
    assert 2 <= stopped < 8, stopped
    assert latest(run) == f"step{stopped:08d}"
    time.sleep(1)
    left = [p.pid for p in everyone if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left behind: {left}"
    res = run_torchrun(2, ARGS + [f"output_dir={run}"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    assert f"resumed from {run / 'checkpoints' / f'step{stopped:08d}'}" in res.stdout, res.stdout[-4000:]
    assert_same_losses(metrics(run), reference)
    assert latest(run) == "step00000008"
