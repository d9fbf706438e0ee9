"""Initial weights for a fresh run: `model.init_from`.

Called once per rank on the plain (not yet DeepSpeed-wrapped) model, before the optimizer
exists, so ZeRO partitions the loaded values. Only a fresh run uses it: a resumed run loads its
own checkpoint afterwards, which overwrites these values.

model.init_from may name
  - a safetensors file in our parameter names (what `hydra-import-hf` writes),
  - a folder of safetensors in our names (a `hydra-export-hf` folder: fine-tune from an export),
  - a Hugging Face Qwen2 folder (config.json model_type qwen2): mapped on the fly.
Every tensor found must match a parameter; parameters it does not cover keep their random
initialisation (logged), except that a source without `llm.*` weights is an error.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

log = logging.getLogger("hydra_dist")


def _source_tensors(src: str) -> Dict[str, Callable[[], torch.Tensor]]:
    from hydra_dist.export.qwen_map import hf_to_ours_name
    from hydra_dist.export.st_io import iter_tensors
    p = Path(src)
    if not p.exists():
        raise FileNotFoundError(f"model.init_from: {src} does not exist")
    hf_names = False
    if p.is_dir() and (p / "config.json").is_file():
        hf_names = json.loads((p / "config.json").read_text()).get("model_type") == "qwen2"
    out: Dict[str, Callable[[], torch.Tensor]] = {}
    tied = hf_names and json.loads((p / "config.json").read_text()).get("tie_word_embeddings", False)
    for name, load in iter_tensors(p):
        if hf_names:
            ours = hf_to_ours_name(name)
            if ours is None or (tied and ours == "llm.lm_head.weight"):
                continue
            name = ours
        out[name] = load
    return out


def tp_coordinates() -> tuple[int, int]:
    """(TP size, TP rank), (1, 0) before megatron's parallel state exists."""
    try:
        from megatron.core import parallel_state as ps
        if ps.model_parallel_is_initialized():
            return ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    except ImportError:
        pass
    return 1, 0


@torch.no_grad()
def load_initial_weights(model: torch.nn.Module, cfg, model_names=None) -> Optional[dict]:
    """Load cfg.model.init_from (RunConfig) or cfg.init_from (ModelConfig) into `model` in place.
    model_names: every parameter name of the whole model when `model` is one pipeline chunk
    (megatron engine): the source is checked against the whole model, and the chunk takes the
    tensors it holds. Returns None when init_from is empty, else {"loaded", "kept_init"}."""
    from hydra_dist.models.partition import split_tp
    from hydra_dist.export.qwen_map import VOCAB_TENSORS
    mcfg = getattr(cfg, "model", cfg)
    src = getattr(mcfg, "init_from", "")
    if not src:
        return None
    tensors = _source_tensors(src)
    if not any(k.startswith("llm.") for k in tensors):
        raise ValueError(f"model.init_from: {src} holds no llm.* weights")
    params = dict(model.named_parameters())
    known = set(params) if model_names is None else set(model_names)
    unexpected = sorted(set(tensors) - known - {"llm.lm_head.weight"})
    if unexpected:
        raise ValueError(f"model.init_from: {src} has tensors the model lacks: {unexpected[:8]}"
                         + (" (is model.llm.tie_word_embeddings right?)" if "llm.lm_head.weight" in unexpected else ""))
    if "llm.lm_head.weight" in tensors and "llm.lm_head.weight" not in known:
        raise ValueError(f"model.init_from: {src} has a separate lm_head but model.llm."
                         "tie_word_embeddings=true would drop it")
    if "llm.lm_head.weight" in params and "llm.lm_head.weight" not in tensors and "llm.embed.weight" in tensors:
        tensors["llm.lm_head.weight"] = tensors["llm.embed.weight"]  # tied source, untied model
        log.info("model.init_from: lm_head initialised from the (tied) input embedding")
    tensors = {k: v for k, v in tensors.items() if k in params}  # this chunk's share
    tp, rank = tp_coordinates()
    loaded = []
    for name, load in tensors.items():
        p = params[name]
        full = load()
        if name in VOCAB_TENSORS:
            # Vocab-parallel rows [rank*V_local, (rank+1)*V_local); rows past the source's
            # vocabulary keep the model's initialisation.
            v_local = p.shape[0]
            if full.shape[0] > v_local * tp:
                raise ValueError(f"model.init_from: {name} has {full.shape[0]} vocabulary rows, "
                                 f"more than model.llm.vocab_size={v_local * tp}")
            if tuple(full.shape[1:]) != tuple(p.shape[1:]):
                raise ValueError(f"model.init_from: {name} has shape {tuple(full.shape)}, the model "
                                 f"{(v_local * tp, *p.shape[1:])}")
            lo = rank * v_local
            hi = min(full.shape[0], lo + v_local)
            if hi > lo:
                p[: hi - lo].copy_(full[lo:hi])
        else:
            shard = split_tp(name, full, tp, rank)
            if shard.shape != p.shape:
                raise ValueError(f"model.init_from: {name} has shape {tuple(full.shape)}, which does "
                                 f"not fit the model's {tuple(p.shape)} (tp={tp})")
            p.copy_(shard)
        loaded.append(name)
    kept = sorted(set(params) - set(loaded))
    missing_llm = [k for k in kept if k.startswith("llm.")]
    if missing_llm:
        raise ValueError(f"model.init_from: {src} lacks LLM tensors {missing_llm[:8]}")
    parts = sorted({k.split(".")[0] for k in kept})
    log.info("model.init_from: loaded %d tensors from %s; kept initialisation for %s",
             len(loaded), src, ", ".join(parts) or "nothing")
    return {"loaded": sorted(loaded), "kept_init": kept}
