"""Pre-launch checks of every path key: it exists and has the expected format, so a wrong path
fails in seconds with the key and the file named, before torchrun, the process group or the
data generation start (not later with a library's own message, e.g. safetensors'
"header too large").

No torch here (the config layer stays light): safetensors headers are read with safetensors'
own reader (numpy framework, keys only), torch files are checked to be the zip archives
torch.save writes, MDS folders against their index.json (every shard present with the size
the index records: a truncated shard would otherwise silently drop its samples).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import List, Tuple

Err = Tuple[str, str]


def _local(path: str) -> bool:
    return bool(path) and "://" not in path


def safetensors_problem(path: Path) -> str:
    """'' if safetensors can read the file's header, else why not."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        return f"{path} is not a readable safetensors file ({e})"
    return ""


def _torch_file_problem(path: Path) -> str:
    if not path.is_file():
        return f"{path} does not exist"
    if not zipfile.is_zipfile(path):
        return f"{path} is not a torch.save file (not a zip archive: truncated or another format)"
    return ""


def _weights_problem(path: Path, folder_hint: str) -> str:
    """A .safetensors file, a .pt/.pth/.bin torch file, or a folder of safetensors."""
    if not path.exists():
        return f"{path} does not exist"
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files and not list(path.glob("*.bin")):
            return f"{path} is a folder without *.safetensors ({folder_hint})"
        return next((p for p in map(safetensors_problem, files) if p), "")
    if path.suffix in (".pt", ".pth", ".bin"):
        return _torch_file_problem(path)
    return safetensors_problem(path)


def mds_problem(folder: str) -> str:
    """'' if folder is an MDS folder whose shards all exist with the sizes index.json records."""
    index = Path(folder) / "index.json"
    if not index.is_file():
        return f"{folder} is not an MDS folder (no index.json)"
    try:
        shards = json.loads(index.read_text())["shards"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return f"{index} is not an MDS index ({type(e).__name__}: {e})"
    bad = []
    for sh in shards:
        for kind in ("zip_data", "raw_data"):
            info = sh.get(kind)
            if not info:
                continue
            f = Path(folder) / info["basename"]
            if kind == "raw_data" and sh.get("zip_data") and not f.exists():
                continue  # compressed shard: streaming decompresses it on first use
            size = f.stat().st_size if f.is_file() else None
            if size != info["bytes"]:
                bad.append(f"{f} " + ("is missing" if size is None else
                                      f"has {size} bytes, index.json says {info['bytes']}"))
            break
    if bad:
        return (f"{len(bad)} of {len(shards)} shards do not match {index} (truncated or missing; "
                f"re-copy or re-convert): " + "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else ""))
    return ""


def _hf_tokenizer_problem(path: str) -> str:
    p = Path(path)
    if not p.is_dir():
        return f"{path} is neither 'byte' nor a folder"
    if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        return f"{path} has no tokenizer.json / tokenizer_config.json (not a Hugging Face tokenizer folder)"
    return ""


def check_path_keys(cfg) -> List[Err]:
    """(key, reason) for every local path key of a RunConfig that is missing or malformed."""
    errs: List[Err] = []

    def need(key: str, problem: str) -> None:
        if problem:
            errs.append((key, problem))

    d, m, t = cfg.data, cfg.model, cfg.tokenizer
    if d.sources:
        for i, s in enumerate(d.sources):
            if not s.remote and _local(s.path):
                need(f"data.sources[{i}].path", mds_problem(s.path))
    elif _local(d.path):
        need("data.path", mds_problem(d.path))
    if d.tokenizer != "byte" and _local(d.tokenizer):
        need("data.tokenizer", _hf_tokenizer_problem(d.tokenizer))
    if _local(m.init_from):
        need("model.init_from", _weights_problem(Path(m.init_from), "a hydra-import-hf file, "
                                                 "a hydra-export-hf folder or a HF Qwen2 folder"))
    if _local(m.tokenizer_from):
        p = Path(m.tokenizer_from)
        need("model.tokenizer_from", _torch_file_problem(p / "tokenizer.pt" if p.is_dir() else p))
    if cfg.task == "tokenizer":
        if t.weights.lpips > 0:
            for k in ("trunk_weights", "lin_weights"):
                f = getattr(t.lpips, k)
                if _local(f):
                    need(f"tokenizer.lpips.{k}", _weights_problem(Path(f), "expected a file"))
        for k in ("init_from", "teacher_from"):
            f = getattr(t, k)
            if _local(f):
                need(f"tokenizer.{k}", _weights_problem(Path(f), "an InternViT folder or a tokenizer.pt"))
    return errs
