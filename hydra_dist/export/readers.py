"""Pick the checkpoint reader from what a step folder holds. Every reader streams full (TP- and
pipeline-merged) tensors one at a time: names(), shape(n), dtype(n), numel(n), load(n), items(),
layout() (the training layout, recorded in hydra_export.json)."""
from __future__ import annotations

from pathlib import Path

from .ds_reader import ZeroCheckpoint, is_deepspeed_checkpoint
from .megatron_reader import MegatronCheckpoint, is_megatron_checkpoint


def open_checkpoint(folder: str | Path):
    folder = Path(folder)
    megatron, deepspeed = is_megatron_checkpoint(folder), is_deepspeed_checkpoint(folder)
    if megatron and deepspeed:
        # one engine writes one step folder; both kinds means files from two runs were mixed
        raise ValueError(f"{folder}: holds both megatron-engine (model_ppXX_tpYY.safetensors) "
                         "and DeepSpeed (*_model_states.pt) files")
    if megatron:
        return MegatronCheckpoint(folder)
    if deepspeed:
        return ZeroCheckpoint(folder)
    seen = sorted(p.name for p in folder.iterdir())
    listing = ", ".join(seen[:8]) + (f", ... ({len(seen)} entries)" if len(seen) > 8 else "")
    raise ValueError(f"{folder}: unknown checkpoint layout: expected DeepSpeed ZeRO files "
                     "(mp_rank_XX_model_states.pt, *zero_pp_rank_*_optim_states.pt) or megatron-engine "
                     f"files (model_ppXX_tpYY.safetensors); found: {listing or 'nothing'}")
