"""Config of HYDRA-TOK training (task: tokenizer): pixel decoder, losses, teacher, stages.
Owned by hydra_dist/models/tokenizer and hydra_dist/train/tokenizer_trainer."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenizerConfig:
    # Stage 1 (foundation): encoder + decoder end to end with distillation;
    # stage 2 (decoder refinement): encoder frozen, no distillation, GAN on.
    stage: int = 1
