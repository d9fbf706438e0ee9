"""Fault injection for the reliability tests (docs/reliability.md); inert unless HYDRA_FAULT is set.

HYDRA_FAULT is a comma-separated list of key=value:
  kill_rank=R,at_step=N        rank R SIGKILLs itself at the start of step N (1-based)
  kill_rank=R,in_save_at_step=N  rank R SIGKILLs itself inside the checkpoint save of step N,
                               after DeepSpeed wrote its shards (a half-written .tmp-step folder)
  hang_rank=R,at_step=N        rank R sleeps forever at the start of step N, i.e. before the
                               loss-denominator all-reduce (a hung collective for the others)
  fail_save_at_step=N          every rank raises OSError(ENOSPC) inside the save of step N
  nan_micro=M                  train.inject_nan_at_steps poisons micro-batch M onwards (default 0)
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import time
from typing import Dict

log = logging.getLogger("hydra_dist")
ENV = "HYDRA_FAULT"


def spec() -> Dict[str, int]:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return {}
    out = {}
    for item in raw.split(","):
        key, _, value = item.partition("=")
        out[key.strip()] = int(value)
    return out


def _kill(rank: int, where: str) -> None:
    log.warning("fault injection: rank %d kills itself (SIGKILL) %s", rank, where)
    for h in logging.getLogger().handlers + log.handlers:
        h.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def at_step_start(step: int, rank: int) -> None:
    """Called by the trainer at the start of every step (1-based step number)."""
    f = spec()
    if not f or f.get("at_step") != step:
        return
    if f.get("kill_rank") == rank:
        _kill(rank, f"at the start of step {step}")
    if f.get("hang_rank") == rank:
        log.warning("fault injection: rank %d hangs at the start of step %d", rank, step)
        while True:  # signals (SIGTERM from torchrun) are handled and ignored, like a real hang
            time.sleep(1)


def in_checkpoint_save(step: int, rank: int, folder) -> None:
    """Called by CheckpointManager.save after the engine wrote its shards into `folder`."""
    f = spec()
    if not f:
        return
    if f.get("in_save_at_step") == step and f.get("kill_rank") == rank:
        _kill(rank, f"while saving {folder}")
    if f.get("fail_save_at_step") == step:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + " (injected)", str(folder))


def nan_micro() -> int:
    """First micro-batch of an inject_nan step that gets the NaN loss."""
    return spec().get("nan_micro", 0)
