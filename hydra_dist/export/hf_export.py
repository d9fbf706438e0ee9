"""Training checkpoint (DeepSpeed ZeRO 0-3 with TP, or the megatron engine's TP x PP) -> Hugging
Face folder, tensor by tensor.

OUT/
  model.safetensors.index.json, model-0000i-of-0000N.safetensors   our parameter names
  config.json (model_type "hydra", auto_map), configuration_hydra.py, modeling_hydra.py
  generation_config.json, tokenizer files (or byte_tokenizer.json), hydra_export.json
  language_model/   the LLM alone as a Qwen2ForCausalLM folder (HF names)
Memory: about one merged tensor (readers.open_checkpoint picks the DeepSpeed or the megatron
reader from the folder's files; both read one tensor's bytes at a time; the writer plans the
shards up front and writes each tensor's bytes straight to its file). language_model/ is written
in a second pass that streams the root shards back, so it costs disk (the LLM twice), not memory.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch

from .qwen_map import VOCAB_TENSORS, hf_config_from_llm, ours_to_hf_name, ours_to_hf_tensors
from .readers import open_checkpoint
from .st_io import ShardedWriter, iter_tensors, parse_size, read_metadata, tensor_spec

REMOTE_CODE = Path(__file__).with_name("remote_code")
TOKENIZER_PARTS = ("patch.", "gen_vit.", "gsb.", "sem_vit.", "sem_cls.")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "chat_template.jinja")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


RUN_CONFIG = "hydra_run_config.yaml"   # the exported run's resolved config, beside config.json


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(step folder, run folder) from a step folder, a run's checkpoints/ folder or a run folder
    (the latter two: the tag named by `latest`)."""
    p = Path(path)
    if (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    if (p / "latest").is_file():
        p = p / (p / "latest").read_text().strip()
    if not p.is_dir():
        raise FileNotFoundError(f"{path}: not a checkpoint folder")
    from .manifest import verify
    problem = verify(p) if (p / "manifest.json").exists() or p.name.startswith("step") else None
    if problem:
        raise RuntimeError(f"refusing to export an incomplete or corrupt checkpoint: {problem}")
    return p, p.parent.parent


def _hydra_config(cfg, part: str) -> dict:
    m = cfg.model
    v, g, h = m.vit, m.gsb, m.head
    vision = {"image_size": v.image_size, "patch_size": v.patch_size, "hidden_size": v.hidden_size,
              "num_heads": v.num_heads, "mlp_size": v.mlp_size, "gen_layers": v.gen_layers,
              "sem_layers": v.sem_layers, "norm_eps": v.norm_eps,
              "norm_type": getattr(v, "norm_type", "layer_norm"), "qkv_bias": getattr(v, "qkv_bias", True),
              "qk_norm": getattr(v, "qk_norm", False), "layer_scale_init": getattr(v, "layer_scale_init", 0.0),
              "use_cls_token": v.use_cls_token,
              # what the patch embedding sees (the processor hands it [-1, 1] pixels)
              "pixel_norm": "unit" if v.pixel_norm == "auto" else v.pixel_norm,
              "gsb": {"latent_channels": g.latent_channels, "logvar_min": g.logvar_min,
                      "logvar_max": g.logvar_max}}
    out = {"architectures": ["HydraForPretraining"], "model_type": "hydra", "part": part,
           "auto_map": {"AutoConfig": "configuration_hydra.HydraConfig",
                        "AutoModel": "modeling_hydra.HydraForPretraining"},
           "vision_config": vision, "torch_dtype": "float32"}
    if part == "all":
        out.update(language_config=hf_config_from_llm(m.llm),
                   head_config={"merge": h.merge, "flow_head_layers": h.flow_head_layers,
                                "flow_head_hidden": h.flow_head_hidden, "time_embed_dim": h.time_embed_dim,
                                "latent_skip": h.latent_skip},
                   ntp_weight=m.ntp_weight, fm_weight=m.fm_weight, time_sampling=m.time_sampling,
                   time_shift=m.time_shift)
    return out


def _token_ids(tokenizer: str) -> dict:
    from hydra_dist.data.tokenizer import load_tokenizer
    tok = load_tokenizer(tokenizer)
    return {"bos_token_id": tok.BOS, "eos_token_id": tok.EOS, "pad_token_id": tok.PAD,
            "image_token_id": tok.IMG, "tokenizer_vocab_size": tok.vocab_size}


def _write_tokenizer(tokenizer: str, out: Path, ids: dict) -> None:
    if tokenizer == "byte":
        (out / "byte_tokenizer.json").write_text(json.dumps({
            "type": "byte", "description": "UTF-8 bytes are token ids 0-255; then 4 specials",
            "vocab_size": 260, "specials": {"pad": 256, "bos": 257, "eos": 258, "image": 259},
            "decode": "drop ids >= 256, bytes(...).decode('utf-8', errors='replace')"}, indent=1))
        return
    for name in TOKENIZER_FILES:
        if (Path(tokenizer) / name).is_file():
            shutil.copy2(Path(tokenizer) / name, out / name)


def _write_generation_config(out: Path, ids: dict) -> None:
    gen = {k: ids[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    (out / "generation_config.json").write_text(json.dumps({**gen, "do_sample": False}, indent=1))


def _hf_vocab_of_init(cfg) -> Optional[int]:
    """The HF vocabulary the run was imported from (model.init_from metadata), if known."""
    src = cfg.model.init_from
    if not src or not Path(src).exists():
        return None
    try:
        meta = read_metadata(src)
    except (FileNotFoundError, OSError):
        return None
    return int(meta["hf_vocab_size"]) if "hf_vocab_size" in meta else None


def export_checkpoint(checkpoint: str | Path, out: str | Path, dtype: str = "fp32",
                      shard_size: str | int = "5GB", part: str = "all", config: Optional[str] = None,
                      vocab_size: Optional[int] = None, progress: bool = True) -> dict:
    from tqdm import tqdm

    from hydra_dist.config import load_config
    step_dir, run_dir = resolve_checkpoint(checkpoint)
    cfg_path = Path(config) if config else run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: the run's resolved config (pass --config)")
    cfg = load_config(str(cfg_path), [])
    ck = open_checkpoint(step_dir)  # an unreadable layout fails before OUT is touched
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    to = DTYPES[dtype]
    names = [n for n in ck.names() if part == "all" or n.startswith(TOKENIZER_PARTS)]
    max_bytes = parse_size(shard_size)
    specs = [(n, ck.shape(n), to if ck.dtype(n).is_floating_point else ck.dtype(n)) for n in names]
    w = ShardedWriter(out, max_bytes, specs, {"hydra_part": part})
    largest = 0
    for name in tqdm(names, desc=f"export {step_dir.name}", unit="tensor", disable=not progress):
        t = ck.load(name)
        largest = max(largest, t.numel() * t.element_size())
        w.add(name, t.to(to) if t.is_floating_point() else t)
        del t
    shards = w.close()

    hcfg = _hydra_config(cfg, part)
    hcfg["torch_dtype"] = {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    ids = _token_ids(cfg.data.tokenizer)
    hcfg.update({k: v for k, v in ids.items() if k.endswith("token_id")})
    (out / "config.json").write_text(json.dumps(hcfg, indent=1))
    # the run's resolved config: hydra-generate (and a later model.init_from) rebuild the exact
    # model from it, with no guessing from config.json
    shutil.copy2(cfg_path, out / RUN_CONFIG)
    for f in ("configuration_hydra.py", "modeling_hydra.py"):
        shutil.copy2(REMOTE_CODE / f, out / f)
    _write_generation_config(out, ids)
    _write_tokenizer(cfg.data.tokenizer, out, ids)
    trainer_state = step_dir / "trainer_state.json"
    info = {"checkpoint": str(step_dir.resolve()), **ck.layout(),
            "dtype": dtype, "part": part, "tensors": len(names), "shards": len(shards),
            "trainer_state": json.loads(trainer_state.read_text()) if trainer_state.is_file() else None}
    if part == "all":
        info["language_model"] = export_language_model(out, cfg, dtype, max_bytes, vocab_size, ids)
    (out / "hydra_export.json").write_text(json.dumps(info, indent=1))
    info["largest_tensor_bytes"] = largest
    return info


def export_language_model(out: Path, cfg, dtype: str, max_bytes: int, vocab_size: Optional[int],
                          ids: dict) -> dict:
    """OUT/language_model: a Qwen2ForCausalLM folder streamed from OUT's shards."""
    lm = out / "language_model"
    V = vocab_size or _hf_vocab_of_init(cfg) or cfg.model.llm.vocab_size
    llm = [(name, load) for name, load in iter_tensors(out) if name.startswith("llm.")]
    specs = []
    for name, _ in llm:
        shape, t_dtype = tensor_spec(out, name)
        if name in VOCAB_TENSORS:
            shape = (V, *shape[1:])
        specs.append((ours_to_hf_name(name), shape, t_dtype))
    w = ShardedWriter(lm, max_bytes, specs)
    n = 0
    for name, load in llm:
        for hf_name, t in ours_to_hf_tensors(name, load(), V):
            w.add(hf_name, t)
            n += 1
    w.close()
    hf = hf_config_from_llm(cfg.model.llm, vocab_size=V,
                            torch_dtype={"fp32": "float32", "bf16": "bfloat16"}[dtype],
                            bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"])
    (lm / "config.json").write_text(json.dumps(hf, indent=1))
    _write_generation_config(lm, ids)
    _write_tokenizer(cfg.data.tokenizer, lm, ids)
    return {"tensors": n, "vocab_size": V}
