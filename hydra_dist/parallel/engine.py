"""The interface both engines implement, and what a task hands them for one step.

An engine (ZeroEngine: DeepSpeed ZeRO 0-3 over DP with megatron TP layers inside; MegatronEngine:
DP x TP x PP with megatron-core's pipeline schedules) knows nothing of the model it trains:

  train_step(batches, spec) -> StepResult   forward/backward over the step's micro-batches,
                                            the non-finite guard, the optimizer step
  save_checkpoint(root, tag) / load_checkpoint(root, tag)
                                            the calls checkpoint/manager.py makes (for ZeroEngine
                                            on its `state_engine`, the DeepSpeed engine itself)
  device, optimizer (param_groups), get_global_grad_norm(), module (the model, or this rank's
  pipeline chunk)

The task (train/tasks/) says what a micro-batch's loss is: `micro_loss` for the ZeRO engine,
which calls the whole model; `stage_kwargs` and `seq_length` for the pipeline engine, whose
chunks' forward returns the loss terms on the last stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch


@dataclass
class StepSpec:
    keys: Tuple[str, ...]          # the loss terms summed per step, "loss" (what is minimised) first
    # ZeRO engine: micro_loss(model, batch) -> (loss tensor, {key: value} for keys[1:])
    micro_loss: Optional[Callable[[Any, dict], Tuple[torch.Tensor, Dict[str, Any]]]] = None
    # pipeline engine: chunk(batch, **stage_kwargs); rows of the (seq, micro_batch, hidden) p2p
    # tensor; the last chunk returns {key: value} for every key
    stage_kwargs: Dict[str, Any] = field(default_factory=dict)
    seq_length: int = 0
    nan_from_micro: Optional[int] = None   # fault-injection tests only: poison micro-batches
    tokens: Optional[float] = None         # real tokens in the step over all ranks (throughput)


@dataclass
class StepResult:
    acc: torch.Tensor   # float64 [len(keys)] on CPU: each term summed over micro-batches and DP
    skipped: bool       # a non-finite loss on some rank: no update anywhere
