"""Preemption: a signal (SLURM's --signal, a scheduler's SIGTERM) sets a flag; all ranks agree
at the next step boundary (one all-reduce of a flag), save a checkpoint and exit cleanly, so
no step is lost or repeated. Only the first signal is acted upon; a second one is ignored
while the save is in progress.
"""
from __future__ import annotations

import logging
import signal

import torch
import torch.distributed as dist

from hydra_dist.distributed.init import comm_tensor

log = logging.getLogger("hydra_dist")
EXIT_PREEMPTED = 0   # a clean save; the launcher decides whether to requeue (see slurm/)
FINISHED_MARKER = "FINISHED"


class PreemptionFlag:
    def __init__(self, signals=("SIGUSR1", "SIGUSR2", "SIGTERM")):
        self.raised: str | None = None
        for name in signals:
            signal.signal(getattr(signal, name), self._handle)

    def _handle(self, signum, _frame):
        if self.raised is None:
            self.raised = signal.Signals(signum).name
            log.warning("received %s: will checkpoint and stop at the next step boundary", self.raised)

    def agreed(self) -> bool:
        """True on every rank if any rank was signalled (ranks may get signals at different times)."""
        if not dist.is_initialized():
            return self.raised is not None
        flag = comm_tensor([1.0 if self.raised else 0.0], torch.float32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)
