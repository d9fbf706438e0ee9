"""Training checkpoint (DeepSpeed ZeRO 0-3 with TP, or the megatron engine's TP x PP) -> Hugging
Face folder, tensor by tensor.

OUT/
  model.safetensors.index.json, model-0000i-of-0000N.safetensors   our names for the vision
      tower, projector and flow head, `decoder.*` (the pixel decoder, when known), the LLM under
      transformers' Qwen2Model names (`llm.*`, `lm_head.weight`; qwen_map.ours_to_export_name)
  config.json (model_type "hydra", auto_map), configuration_hydra.py, modeling_hydra.py
  tokenizer files (the run's, or the byte tokenizer's tokenization_hydra.py + config),
  preprocessor_config.json / processor_config.json (+ their remote code), generation_config.json,
  README.md (model card), hydra_run_config.yaml, hydra_export.json
  language_model/   the LLM alone as a Qwen2ForCausalLM folder (HF names)
The pixel decoder comes from the HYDRA-TOK run the vision tower was initialised from
(model.tokenizer_from) or --decoder; its encoder must be the checkpoint's (else it draws noise).
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

from .hf_decoder import load_decoder
from .hf_files import (write_generation_config, write_json, write_model_card, write_processor,
                       write_tokenizer)
from .qwen_map import export_to_hf_name, hf_config_from_llm, ours_to_export_name, resize_vocab
from .readers import open_checkpoint
from .st_io import ShardedWriter, iter_tensors, parse_size, read_metadata, tensor_spec

REMOTE_CODE = Path(__file__).with_name("remote_code")
TOKENIZER_PARTS = ("patch.", "gen_vit.", "gsb.", "sem_vit.", "sem_cls.")
VOCAB_ROWS = ("model.embed_tokens.weight", "lm_head.weight")
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
    auto = {"AutoConfig": "configuration_hydra.HydraConfig",
            "AutoModel": "modeling_hydra.HydraForPretraining"}
    if part == "all":
        auto.update(AutoModelForCausalLM="modeling_hydra.HydraForConditionalGeneration",
                    AutoModelForImageTextToText="modeling_hydra.HydraForConditionalGeneration")
    out = {"architectures": ["HydraForConditionalGeneration" if part == "all" else "HydraForPretraining"],
           "model_type": "hydra", "part": part, "auto_map": auto,
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
                      vocab_size: Optional[int] = None, progress: bool = True,
                      decoder: Optional[str] = None) -> dict:
    """decoder: a HYDRA-TOK run folder or tokenizer.pt whose pixel decoder goes into the export
    (default: the run's model.tokenizer_from; refused when its encoder is not the checkpoint's)."""
    from tqdm import tqdm

    from hydra_dist.config import load_config
    step_dir, run_dir = resolve_checkpoint(checkpoint)
    cfg_path = Path(config) if config else run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: the run's resolved config (pass --config)")
    cfg = load_config(str(cfg_path), [])
    ck = open_checkpoint(step_dir)  # an unreadable layout fails before OUT is touched
    dec = load_decoder(decoder, cfg, ck) if part == "all" else None
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    to = DTYPES[dtype]
    names = [n for n in ck.names() if part == "all" or n.startswith(TOKENIZER_PARTS)]
    max_bytes = parse_size(shard_size)
    specs = [(ours_to_export_name(n), ck.shape(n), to if ck.dtype(n).is_floating_point else ck.dtype(n))
             for n in names]
    dec_tensors = dec.tensors if dec else {}
    specs += [(n, tuple(t.shape), to) for n, t in dec_tensors.items()]
    w = ShardedWriter(out, max_bytes, specs, {"hydra_part": part})
    largest = 0
    for name in tqdm(names, desc=f"export {step_dir.name}", unit="tensor", disable=not progress):
        t = ck.load(name)
        largest = max(largest, t.numel() * t.element_size())
        w.add(ours_to_export_name(name), t.to(to) if t.is_floating_point() else t)
        del t
    for name, t in dec_tensors.items():
        w.add(name, t.to(to))
    shards = w.close()

    hcfg = _hydra_config(cfg, part)
    hcfg["torch_dtype"] = {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    ids = _token_ids(cfg.data.tokenizer)
    hcfg.update({k: v for k, v in ids.items() if k.endswith("token_id")})
    n_img = (cfg.model.vit.image_size // cfg.model.vit.patch_size // cfg.model.head.merge) ** 2
    if part == "all":
        hcfg.update(num_image_tokens=n_img, decoder_config=dec.config if dec else None,
                    image_generation={"num_steps": 20, "guidance_scale": 3.0, "decoder_steps": 20})
    write_json(out / "config.json", hcfg)
    # the run's resolved config: hydra-generate (and a later model.init_from) rebuild the exact
    # model from it, with no guessing from config.json
    shutil.copy2(cfg_path, out / RUN_CONFIG)
    for f in ("configuration_hydra.py", "modules_hydra.py", "modeling_hydra.py"):
        shutil.copy2(REMOTE_CODE / f, out / f)
    write_generation_config(out, ids)
    image_token = write_tokenizer(cfg.data.tokenizer, out, REMOTE_CODE)
    write_processor(out, REMOTE_CODE, cfg, image_token, n_img)
    trainer_state = step_dir / "trainer_state.json"
    info = {"checkpoint": str(step_dir.resolve()), **ck.layout(),
            "dtype": dtype, "part": part, "tensors": len(names) + len(dec_tensors), "shards": len(shards),
            "decoder": dec.source if dec else None,
            "trainer_state": json.loads(trainer_state.read_text()) if trainer_state.is_file() else None}
    write_model_card(out, cfg, info, dec is not None)
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
    llm = [(export_to_hf_name(name), name, load) for name, load in iter_tensors(out)
           if export_to_hf_name(name)]
    specs = []
    for hf_name, name, _ in llm:
        shape, t_dtype = tensor_spec(out, name)
        if hf_name in VOCAB_ROWS:
            shape = (V, *shape[1:])
        specs.append((hf_name, shape, t_dtype))
    w = ShardedWriter(lm, max_bytes, specs)
    for hf_name, _, load in llm:
        t = load()
        w.add(hf_name, resize_vocab(t, V) if hf_name in VOCAB_ROWS else t)
    n = len(llm)
    w.close()
    hf = hf_config_from_llm(cfg.model.llm, vocab_size=V,
                            torch_dtype={"fp32": "float32", "bf16": "bfloat16"}[dtype],
                            bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"])
    (lm / "config.json").write_text(json.dumps(hf, indent=1))
    write_generation_config(lm, ids)
    write_tokenizer(cfg.data.tokenizer, lm, REMOTE_CODE)
    return {"tensors": n, "vocab_size": V}
