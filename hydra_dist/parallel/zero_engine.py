"""The DeepSpeed engine behind parallel/engine.py's interface: one optimizer step over the
step's micro-batches with the non-finite loss guard.

The guard is a MAX all-reduce of a "this rank's loss is not finite" flag before every backward,
so every rank skips together; gradients of micro-batches already accumulated are dropped and
DeepSpeed's micro-step counter rewound, so the next step starts on a clean accumulation boundary.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from hydra_dist.distributed.init import comm_tensor, to_comm
from hydra_dist.distributed.phase import Phase

from .engine import StepResult, StepSpec


def all_finite(loss: torch.Tensor) -> bool:
    """True on every rank only if every rank's loss is finite (so all skip together)."""
    bad = comm_tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], torch.float32)
    Phase.set("all_reduce of the non-finite loss flag")
    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bad.item() == 0.0


class ZeroEngine:
    kind = "deepspeed"

    def __init__(self, ds_engine, samples_per_micro: int):
        self.state_engine = ds_engine   # what CheckpointManager saves and loads
        self.samples_per_micro = samples_per_micro   # micro_batch_size x dp (DeepSpeed's counter)

    @property
    def device(self):
        return self.state_engine.device

    @property
    def module(self):
        return self.state_engine.module

    @property
    def optimizer(self):
        return self.state_engine.optimizer

    def get_global_grad_norm(self) -> float:
        return float(self.state_engine.get_global_grad_norm() or 0.0)

    def _discard_accumulated(self, micro_done: int) -> None:
        if micro_done:
            ds = self.state_engine
            ds.optimizer.zero_grad()
            ds.micro_steps -= micro_done
            ds.global_samples -= micro_done * self.samples_per_micro

    def train_step(self, batches, spec: StepSpec) -> StepResult:
        ds, keys = self.state_engine, spec.keys
        acc = torch.zeros(len(keys), dtype=torch.float64, device=ds.device)
        for micro, batch in enumerate(batches):
            Phase.set(f"forward of micro-batch {micro}")
            loss, terms = spec.micro_loss(ds, batch)
            if spec.nan_from_micro is not None and micro >= spec.nan_from_micro:
                loss = loss * float("nan")   # fault-injection tests only
            if not all_finite(loss):
                self._discard_accumulated(micro)
                return StepResult(torch.full((len(keys),), float("nan"), dtype=torch.float64), True)
            Phase.set(f"backward of micro-batch {micro}")
            ds.backward(loss)
            Phase.set(f"optimizer step (micro-batch {micro})")
            ds.step()
            acc += torch.stack([loss.detach().reshape(()).double()] +
                               [torch.as_tensor(terms.get(k, 0.0), dtype=torch.float64,
                                                device=acc.device).reshape(()) for k in keys[1:]])
        Phase.set("all_reduce of logged losses")
        dp_group = ps.get_data_parallel_group()
        acc = to_comm(acc, dp_group)
        dist.all_reduce(acc, group=dp_group)
        return StepResult(acc.cpu(), False)
