"""Run real multi-process jobs (torchrun, gloo) from tests, killing the whole process group
on timeout so a hang fails the test instead of stalling CI."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(nproc: int, args: list[str], timeout: float = 300, env: dict | None = None,
                 module: str = "hydra_dist.cli.pretrain", script: str | None = None
                 ) -> subprocess.CompletedProcess:
    """torchrun a module (default: the trainer) or a script with args."""
    target = [str(script)] if script else ["-m", module]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *target, *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None) if env is None or "MLFLOW_TRACKING_URI" not in env else None
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"timed out after {timeout}s (killed): {' '.join(cmd)}\n{out[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")
