"""Name and shape mapping between our LLM (`llm.*`, hydra_dist.models.llm.QwenLM) and Hugging Face
`Qwen2ForCausalLM`, both ways.

  ours                                   HF Qwen2ForCausalLM                        TP dim
  llm.embed.weight                       model.embed_tokens.weight                  0 (vocab)
  llm.layers.N.input_norm.weight         model.layers.N.input_layernorm.weight      -
  llm.layers.N.attn.{q,k,v}.{weight,bias} model.layers.N.self_attn.{q,k,v}_proj.*   0 (column)
  llm.layers.N.attn.o.weight             model.layers.N.self_attn.o_proj.weight     1 (row)
  llm.layers.N.post_norm.weight          model.layers.N.post_attention_layernorm.weight -
  llm.layers.N.mlp.{gate,up}.weight      model.layers.N.mlp.{gate,up}_proj.weight   0 (column)
  llm.layers.N.mlp.down.weight           model.layers.N.mlp.down_proj.weight        1 (row)
  llm.norm.weight                        model.norm.weight                          -
  llm.lm_head.weight                     lm_head.weight                             0 (vocab)
Weights are [out, in] on both sides and RoPE uses the same rotate-halves convention, so no
tensor is transposed or permuted: only renamed, and for the vocabulary rows sliced or padded.

Tied embeddings (Qwen2.5-1.5B): HF stores only embed_tokens and sets tie_word_embeddings; our
QwenLM then has lm_head=None and computes logits with embed.weight. Importing a tied HF model
into an untied config copies embed_tokens into llm.lm_head (the two then train apart);
exporting an untied model always writes lm_head.weight.

Vocabulary padding: our vocab_size may exceed the HF one (rounded up for TP / kernels). Import
pads the extra rows (the caller chooses the fill: see pad_vocab); export slices back to the
vocabulary size asked for. Rows of a padded vocabulary are never the target of a label.

All functions work on one tensor at a time, so callers can stream; they work on full (TP-merged)
tensors. TP-sharded tensors are merged / split with hydra_dist.models.partition by the dims above.
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

import torch

from hydra_dist.models.partition import partition_dim

# ours (without the "llm." prefix) -> HF, per layer
_LAYER = {
    "input_norm.weight": "input_layernorm.weight",
    "post_norm.weight": "post_attention_layernorm.weight",
    "attn.q.weight": "self_attn.q_proj.weight", "attn.q.bias": "self_attn.q_proj.bias",
    "attn.k.weight": "self_attn.k_proj.weight", "attn.k.bias": "self_attn.k_proj.bias",
    "attn.v.weight": "self_attn.v_proj.weight", "attn.v.bias": "self_attn.v_proj.bias",
    "attn.o.weight": "self_attn.o_proj.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}
_LAYER_INV = {v: k for k, v in _LAYER.items()}
_GLOBAL = {"llm.embed.weight": "model.embed_tokens.weight", "llm.norm.weight": "model.norm.weight",
           "llm.lm_head.weight": "lm_head.weight"}
_GLOBAL_INV = {v: k for k, v in _GLOBAL.items()}
VOCAB_TENSORS = ("llm.embed.weight", "llm.lm_head.weight")

_OURS_LAYER = re.compile(r"^llm\.layers\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def ours_to_hf_name(name: str) -> Optional[str]:
    """HF name of one of our `llm.*` parameters (None for non-LLM names)."""
    if name in _GLOBAL:
        return _GLOBAL[name]
    m = _OURS_LAYER.match(name)
    if m and m.group(2) in _LAYER:
        return f"model.layers.{m.group(1)}.{_LAYER[m.group(2)]}"
    return None


def hf_to_ours_name(name: str) -> Optional[str]:
    """Our name of an HF Qwen2 parameter (None for names we do not hold, e.g. rotary buffers)."""
    if name in _GLOBAL_INV:
        return _GLOBAL_INV[name]
    m = _HF_LAYER.match(name)
    if m and m.group(2) in _LAYER_INV:
        return f"llm.layers.{m.group(1)}.{_LAYER_INV[m.group(2)]}"
    return None


def ours_to_export_name(name: str) -> str:
    """The name a tensor has in a hydra-export-hf root folder: the LLM under transformers'
    Qwen2Model names (`llm.layers.N.self_attn.q_proj.weight`, `llm.embed_tokens.weight`) and
    `lm_head.weight`, the remote code's layout; every other name is ours unchanged."""
    hf = ours_to_hf_name(name)
    if hf is None:
        return name
    return hf if hf == "lm_head.weight" else "llm." + hf[len("model."):]


def export_to_ours_name(name: str) -> str:
    """Inverse of ours_to_export_name."""
    if name == "lm_head.weight":
        return "llm.lm_head.weight"
    if name.startswith("llm."):
        return hf_to_ours_name("model." + name[len("llm."):]) or name
    return name


def export_to_hf_name(name: str) -> Optional[str]:
    """A root export LLM name -> the Qwen2ForCausalLM name (language_model/); None otherwise."""
    if name == "lm_head.weight":
        return name
    return "model." + name[len("llm."):] if name.startswith("llm.") else None


def tp_partition_dim(name: str) -> Optional[int]:
    """Partition dim of one of our names or an HF Qwen2 name (None: replicated)."""
    ours = name if name.startswith("llm.") else hf_to_ours_name(name)
    return partition_dim(ours) if ours else None


def resize_vocab(t: torch.Tensor, rows: int, pad: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Slice or pad the vocabulary rows (dim 0) of an embedding / LM-head matrix to `rows`.
    Padding rows come from `pad` (e.g. the model's own initialisation), else zeros."""
    n = t.shape[0]
    if n == rows:
        return t
    if n > rows:
        return t[:rows].contiguous()
    extra = pad[n:rows].to(t) if pad is not None else t.new_zeros(rows - n, *t.shape[1:])
    return torch.cat([t, extra], dim=0)


def expected_shapes(c, vocab_size: Optional[int] = None) -> Dict[str, Tuple[int, ...]]:
    """Our `llm.*` parameter shapes for an LLMConfig-like object (full tensors, TP=1)."""
    V, H, F = vocab_size or c.vocab_size, c.hidden_size, c.ffn_size
    hd = H // c.num_heads
    kv = c.num_kv_heads * hd
    out = {"llm.embed.weight": (V, H), "llm.norm.weight": (H,)}
    if not c.tie_word_embeddings:
        out["llm.lm_head.weight"] = (V, H)
    for i in range(c.num_layers):
        p = f"llm.layers.{i}."
        out.update({p + "input_norm.weight": (H,), p + "post_norm.weight": (H,),
                    p + "attn.q.weight": (H, H), p + "attn.q.bias": (H,),
                    p + "attn.k.weight": (kv, H), p + "attn.k.bias": (kv,),
                    p + "attn.v.weight": (kv, H), p + "attn.v.bias": (kv,),
                    p + "attn.o.weight": (H, H),
                    p + "mlp.gate.weight": (F, H), p + "mlp.up.weight": (F, H),
                    p + "mlp.down.weight": (H, F)})
    return out


# --- configs --------------------------------------------------------------------------------
def llm_fields_from_hf(hf: dict) -> dict:
    """Our model.llm.* values from an HF Qwen2 config.json dict."""
    return {"vocab_size": hf["vocab_size"], "hidden_size": hf["hidden_size"],
            "num_layers": hf["num_hidden_layers"], "num_heads": hf["num_attention_heads"],
            "num_kv_heads": hf.get("num_key_value_heads", hf["num_attention_heads"]),
            "ffn_size": hf["intermediate_size"], "rope_theta": float(hf.get("rope_theta", 1e4)),
            "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
            "max_position_embeddings": hf.get("max_position_embeddings", 4096),
            "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False))}


def hf_config_from_llm(c, vocab_size: Optional[int] = None, **extra) -> dict:
    """An HF Qwen2 config.json dict for our LLMConfig-like object."""
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
           "vocab_size": vocab_size or c.vocab_size, "hidden_size": c.hidden_size,
           "intermediate_size": c.ffn_size, "num_hidden_layers": c.num_layers,
           "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads,
           "hidden_act": "silu", "max_position_embeddings": c.max_position_embeddings,
           "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
           "tie_word_embeddings": bool(c.tie_word_embeddings), "use_cache": True,
           "use_sliding_window": False, "sliding_window": None, "max_window_layers": c.num_layers,
           "attention_dropout": 0.0, "initializer_range": 0.02, "torch_dtype": "float32"}
    cfg.update(extra)
    return cfg


def check_llm_compatible(c, hf: dict) -> list:
    """Differences (other than vocab size and tying) that make an HF Qwen2 unloadable into c."""
    want = llm_fields_from_hf(hf)
    errs = []
    for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_size"):
        if getattr(c, key) != want[key]:
            errs.append(f"model.llm.{key}={getattr(c, key)} but the HF model has {want[key]}")
    for key in ("rope_theta", "rms_norm_eps"):
        if abs(float(getattr(c, key)) - want[key]) > 1e-12 * max(1.0, abs(want[key])):
            errs.append(f"model.llm.{key}={getattr(c, key)} but the HF model has {want[key]}")
    if c.vocab_size < want["vocab_size"]:
        errs.append(f"model.llm.vocab_size={c.vocab_size} is smaller than the HF vocabulary "
                    f"{want['vocab_size']}")
    if c.tie_word_embeddings and not want["tie_word_embeddings"]:
        errs.append("model.llm.tie_word_embeddings=true but the HF model has a separate lm_head")
    return errs


def hf_tensors_to_ours(name: str, t: torch.Tensor, vocab_size: int, tied_target: bool,
                       pad: Optional[torch.Tensor] = None):
    """One HF tensor -> list of (our name, tensor). The embedding fans out to lm_head when the HF
    model is tied but our target is not (the caller passes tied_target=False and the HF config's
    tie flag decides whether lm_head.weight arrives separately)."""
    ours = hf_to_ours_name(name)
    if ours is None:
        return []
    if ours in VOCAB_TENSORS:
        t = resize_vocab(t, vocab_size, pad)
    if ours == "llm.lm_head.weight" and tied_target:
        return []  # our tied model has no lm_head; HF checkpoints of tied models may carry a copy
    return [(ours, t)]


def ours_to_hf_tensors(name: str, t: torch.Tensor, vocab_size: Optional[int] = None):
    """One of our tensors -> [(HF name, tensor)] (empty for non-LLM names)."""
    hf = ours_to_hf_name(name)
    if hf is None:
        return []
    if name in VOCAB_TENSORS and vocab_size is not None:
        t = resize_vocab(t, vocab_size)
    return [(hf, t)]
