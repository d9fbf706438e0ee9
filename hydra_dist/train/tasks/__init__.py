"""The two things hydra_dist trains, behind one interface (base.py): the unified model
(unified.py) and HYDRA-TOK (tokenizer.py). train/trainer.py's loop runs either on either engine."""
from __future__ import annotations

from hydra_dist.config import RunConfig

from .base import Task


def make_task(cfg: RunConfig) -> Task:
    if cfg.task == "tokenizer":
        from .tokenizer import TokenizerTask
        return TokenizerTask(cfg)
    from .unified import UnifiedTask
    return UnifiedTask(cfg)


__all__ = ["Task", "make_task"]
