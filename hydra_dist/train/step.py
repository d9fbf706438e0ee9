"""One optimizer step on the DeepSpeed engine, with the loss-denominator exchange and the
non-finite loss guard. The trainer's loop stays readable; this file holds the mechanics."""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from hydra_dist.distributed.init import comm_tensor, to_comm

from .faults import nan_micro

log = logging.getLogger("hydra_dist")


class Phase:
    """What the rank is doing, named in the error when a collective times out or fails."""
    current = "start-up"

    @classmethod
    def set(cls, name: str) -> None:
        cls.current = name


def loss_denominators(batches, dp_group, dp: int):
    """Global (labelled tokens, generation images, real tokens) of a step, over all micro-batches
    and DP ranks; returns (ntp_den, fm_den, counts) scaled so DeepSpeed's DP averaging yields
    the exact global per-token / per-image mean."""
    counts = comm_tensor([sum(float(b["labels"].ge(0).sum()) for b in batches),
                          sum(float((b["is_gen"].float() * b["image_weight"]).sum()) for b in batches),
                          sum(float(b["segment_ids"].gt(0).sum()) for b in batches)], group=dp_group)
    Phase.set("all_reduce of loss denominators")
    dist.all_reduce(counts, group=dp_group)
    counts = counts.cpu()
    ga = len(batches)
    return max(counts[0].item(), 1.0) / (dp * ga), max(counts[1].item(), 1.0) / (dp * ga), counts


def _all_finite(loss: torch.Tensor) -> bool:
    """True on every rank only if every rank's loss is finite (so all skip together)."""
    bad = comm_tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], torch.float32)
    Phase.set("all_reduce of the non-finite loss flag")
    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bad.item() == 0.0


def _discard_accumulated(engine, micro_done: int, samples_per_micro: int) -> None:
    """Drop gradients of micro-batches already accumulated in this step and rewind DeepSpeed's
    micro-step counter, so the next step starts on a clean accumulation boundary."""
    if micro_done:
        engine.optimizer.zero_grad()
        engine.micro_steps -= micro_done
        engine.global_samples -= micro_done * samples_per_micro


def deepspeed_step(engine, batches, to_device, noise_seed: int, ntp_den: float, fm_den: float,
                   dp_group, samples_per_micro: int, inject_nan: bool = False) -> dict:
    """Forward/backward over the micro-batches and the optimizer step. Returns summed
    (over micro-batches, this rank) loss terms and whether the step was skipped."""
    acc = torch.zeros(3, dtype=torch.float64)  # loss, ntp, fm
    for micro, batch in enumerate(batches):
        Phase.set(f"forward of micro-batch {micro}")
        out = engine(to_device(batch), noise_seed=noise_seed, ntp_den=ntp_den, fm_den=fm_den)
        loss = out["loss"] * float("nan") if inject_nan and micro >= nan_micro() else out["loss"]
        if not _all_finite(loss):
            _discard_accumulated(engine, micro, samples_per_micro)
            return {"acc": torch.full((3,), float("nan"), dtype=torch.float64), "skipped": True}
        Phase.set(f"backward of micro-batch {micro}")
        engine.backward(loss)
        Phase.set(f"optimizer step (micro-batch {micro})")
        engine.step()
        acc += torch.stack([loss.detach().double().cpu(), out["ntp"].double().cpu(),
                            out["fm"].double().cpu()])
    Phase.set("all_reduce of logged losses")
    acc = to_comm(acc, dp_group)
    dist.all_reduce(acc, group=dp_group)
    return {"acc": acc.cpu(), "skipped": False}
