"""Resolve model.vit.pixel_norm = auto (schema.ViTConfig) to what the weights expect.

- HYDRA-TOK (task: tokenizer): imagenet when the student starts from InternViT
  (tokenizer.init_from) or distils from an InternViT teacher (tokenizer.teacher_from), else unit.
- The unified model: the vision tower comes from model.tokenizer_from (a HYDRA-TOK run) or from
  model.init_from (an export of an earlier stage); the value those recorded (the run's resolved
  config.yaml or tokenizer.pt meta, the export's config.json) is taken; sources from before the
  key were trained on [-1, 1] (unit).
- Nothing loaded: unit.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import yaml


def _from_tokenizer(path: str) -> Optional[str]:
    """What a HYDRA-TOK run recorded: its resolved config.yaml, else its tokenizer.pt's meta.
    Runs from before the key fed [-1, 1]: unit. None when the path does not exist (the path
    checks report that)."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    if (folder / "config.yaml").is_file():
        v = (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("model", {}).get("vit", {})
        got = v.get("pixel_norm", "unit")
        return "unit" if got == "auto" else got
    pt = p if p.is_file() else p / "tokenizer.pt"
    if pt.is_file():
        import torch
        try:
            meta = torch.load(pt, map_location="cpu", weights_only=True, mmap=True).get("meta") or {}
        except Exception:   # not a torch file: config/paths.py names it as a config error
            return None
        return recorded_in_meta(meta)
    return None


def recorded_in_meta(meta: dict) -> str:
    """The pixel_norm in a tokenizer.pt's meta (the run's resolved config); unit before the key."""
    got = ((meta.get("config") or {}).get("model") or {}).get("vit", {}).get("pixel_norm", "unit")
    return "unit" if got == "auto" else got


def _from_export(path: str) -> Optional[str]:
    """What a hydra-export-hf folder recorded (vision_config.pixel_norm); None for anything
    without a vision tower (a Qwen2 folder, a weights file)."""
    f = Path(path) / "config.json"
    if not f.is_file():
        return None
    v = json.loads(f.read_text()).get("vision_config") or {}
    return v.get("pixel_norm", "unit") if v else None


def resolve_pixel_norm(cfg) -> None:
    """Set cfg.model.vit.pixel_norm when it is auto (every source records its value or
    predates the key, so this never fails)."""
    v = cfg.model.vit
    if v.pixel_norm != "auto":
        return
    if cfg.task == "tokenizer":
        t = cfg.tokenizer
        v.pixel_norm = "imagenet" if (t.init_from or t.teacher_from) else "unit"
        return
    got = (_from_tokenizer(cfg.model.tokenizer_from) if cfg.model.tokenizer_from else None) or \
        (_from_export(cfg.model.init_from) if cfg.model.init_from else None)
    v.pixel_norm = got or "unit"
