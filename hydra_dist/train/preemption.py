"""Preemption: a signal (SLURM's --signal, a scheduler's SIGTERM) sets a flag; all ranks agree
at the next step boundary (one all-reduce of a flag), save a checkpoint and exit cleanly, so
no step is lost or repeated. Only the first signal is acted upon; a second one is ignored
while the save is in progress.

Grace: a scheduler kills the job a fixed time after its signal (SLURM: the N of
`--signal=B:USR1@N`, 300 s in slurm/*.sh; a preempting partition's GraceTime after SIGTERM).
The stop costs the rest of the current step plus one save, so every save is timed and the
first one that, with its step, overruns `checkpoint.grace_s` says so: a real preemption would
be killed mid-save and lose everything since the previous checkpoint.
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
    def __init__(self, grace_s: float = 0.0, signals=("SIGUSR1", "SIGUSR2", "SIGTERM")):
        self.raised: str | None = None
        self.grace_s = grace_s          # 0: unknown, not checked
        self.needed_s: float | None = None   # last step + last save, once measured
        self._warned = False
        for name in signals:
            signal.signal(getattr(signal, name), self._handle)

    def _handle(self, signum, _frame):
        if self.raised is None:
            self.raised = signal.Signals(signum).name
            need = "" if self.needed_s is None else f"; a step and a save took {self.needed_s:.0f} s"
            log.warning("received %s: will checkpoint and stop at the next step boundary (grace "
                        "%.0f s%s)", self.raised, self.grace_s, need)

    def note_save(self, step_s: float, save_s: float) -> bool:
        """Record how long a stop would take now; True (and one warning per run) when it does
        not fit in the grace period."""
        self.needed_s = step_s + save_s
        over = self.grace_s > 0 and self.needed_s > self.grace_s
        if over and not self._warned:
            self._warned = True
            log.warning("a step (%.1f s) plus a checkpoint save (%.1f s) take longer than the "
                        "preemption grace period checkpoint.grace_s = %.0f s: a preempted job "
                        "would be killed mid-save. Give the scheduler more time (SLURM: "
                        "--signal=B:USR1@N with N above the sum, and checkpoint.grace_s=N), or "
                        "save faster (docs/slurm.md, section 2)", step_s, save_s, self.grace_s)
        return over

    def agreed(self) -> bool:
        """True on every rank if any rank was signalled (ranks may get signals at different times)."""
        if not dist.is_initialized():
            return self.raised is not None
        flag = comm_tensor([1.0 if self.raised else 0.0], torch.float32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)
