"""What a task is to the training loop (train/trainer.py).

The loop owns everything both tasks share: data loading, the engine's step, the non-finite
guard and its stop, fault phases, metrics (throughput, MFU, data errors, learning rates),
checkpoints and preemption, resume, tracking and the final state. A task says what is trained
and how a step's loss is formed:

  keys, log_names     the loss terms an engine sums per step ("loss" first) and their logged names
  build_engine        model or pipeline chunks, inside the engine the config names
  fast_paths          one log line: the attention and GSB paths this run takes on `device`
  build_loader        the data for this task
  prepare_step        a step's micro-batches -> (batches for the engine, parallel.engine.StepSpec)
  after_step          work outside the engine after its step (HYDRA-TOK's discriminator update)
  on_start / evaluate / on_finish   held-out evaluation, sample grids, the final artefacts
  extra_state / load_extra_state    state outside the engine that rides in the checkpoint
  log_line            the terms worth one log line
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Protocol, Tuple


class Task(Protocol):
    name: str
    keys: Tuple[str, ...]
    log_names: Dict[str, str]

    def build_engine(self, layout): ...

    def fast_paths(self, device) -> str: ...

    def build_loader(self, data_path: str, layout, state): ...

    def prepare_step(self, batches: list, step: int, layout) -> tuple: ...

    def after_step(self, skipped: bool, layout) -> Dict[str, float]: ...

    def on_start(self, engine, layout, tracker, fresh: bool) -> None: ...

    def evaluate(self, engine, step: int, layout, tracker) -> None: ...

    def on_finish(self, engine, run_dir, step: int, layout, tracker, finished: bool) -> Dict[str, Any]: ...

    def extra_state(self) -> Optional[Dict[str, Any]]: ...

    def load_extra_state(self, extra: Optional[Dict[str, Any]]) -> None: ...

    def tags(self) -> Dict[str, str]: ...

    def log_line(self, m: Dict[str, float]) -> str: ...
