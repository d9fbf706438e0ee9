"""Import a local Hugging Face Qwen2 checkpoint as our `llm.*` tensors (an initial checkpoint).

The output is one safetensors file in our parameter names at the HF vocabulary size; the
loader (hydra_dist.checkpoint.init_weights) pads the vocabulary to model.llm.vocab_size with the
model's own initialisation and slices for TP. Metadata records the HF config, so the run can
be checked against it and exports can slice the vocabulary back.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .qwen_map import check_llm_compatible, hf_to_ours_name, llm_fields_from_hf
from .st_io import iter_tensors

FORMAT = "hydra-init"


def read_hf_config(hf_dir: str | Path) -> dict:
    p = Path(hf_dir) / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"{hf_dir}: no config.json (expected a local Hugging Face model folder)")
    cfg = json.loads(p.read_text())
    if cfg.get("model_type") != "qwen2":
        raise ValueError(f"{hf_dir}: model_type is {cfg.get('model_type')!r}, expected 'qwen2'")
    return cfg


def import_qwen2(hf_dir: str | Path, out_file: str | Path, llm_cfg=None) -> dict:
    """Write our `llm.*` tensors from the HF Qwen2 folder `hf_dir` to `out_file` (safetensors).
    llm_cfg: the run's model.llm (optional) to check shapes against before writing.
    Returns a summary (tensor count, the model.llm overrides matching the HF model)."""
    from safetensors.torch import save_file
    hf = read_hf_config(hf_dir)
    if llm_cfg is not None:
        errs = check_llm_compatible(llm_cfg, hf)
        if errs:
            raise ValueError(f"{hf_dir} does not fit the run's model.llm:\n  " + "\n  ".join(errs))
    tied = bool(hf.get("tie_word_embeddings", False))
    out = {}
    skipped = []
    for name, load in iter_tensors(hf_dir):
        ours = hf_to_ours_name(name)
        if ours is None:
            skipped.append(name)
            continue
        if ours == "llm.lm_head.weight" and tied:
            continue  # a copy of embed_tokens in some tied checkpoints
        # Tensors are kept as stored (bf16 stays bf16); the loader casts to the model dtype.
        out[ours] = load().contiguous()
    fields = llm_fields_from_hf(hf)
    expected = 1 + 1 + (0 if tied else 1) + 12 * fields["num_layers"]
    if len(out) != expected:
        raise ValueError(f"{hf_dir}: found {len(out)} Qwen2 tensors, expected {expected}; "
                         f"unmapped names: {skipped[:8]}")
    meta = {"format": FORMAT, "source": str(Path(hf_dir).resolve()), "parts": "llm",
            "hf_config": json.dumps(hf), "hf_vocab_size": str(hf["vocab_size"]),
            "llm_overrides": json.dumps(fields)}
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(out_file), metadata=meta)
    return {"tensors": len(out), "llm": fields, "skipped": skipped, "out": str(out_file)}


def overrides_for(fields: dict, vocab_size: Optional[int] = None) -> list:
    """`model.llm.key=value` overrides that make a run's LLM match the imported one."""
    f = dict(fields)
    if vocab_size:
        f["vocab_size"] = vocab_size
    return [f"model.llm.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in f.items()]
