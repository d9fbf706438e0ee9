"""Safetensors streaming: read a file or a sharded folder tensor by tensor, write sharded
folders with an index (Hugging Face layout), never holding more than one shard in memory."""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from safetensors import safe_open

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def safetensors_files(src: str | Path) -> List[Path]:
    """The .safetensors files of a file, or of a folder (via its index when sharded)."""
    p = Path(src)
    if p.is_file():
        return [p]
    if (p / INDEX).is_file():
        names = sorted(set(json.loads((p / INDEX).read_text())["weight_map"].values()))
        return [p / n for n in names]
    if (p / SINGLE).is_file():
        return [p / SINGLE]
    found = sorted(p.glob("*.safetensors"))
    if not found:
        raise FileNotFoundError(f"{src}: no safetensors weights (looked for {INDEX}, {SINGLE}, *.safetensors)")
    return found


def iter_tensors(src: str | Path) -> Iterator[Tuple[str, Callable[[], torch.Tensor]]]:
    """(name, load) pairs; `load()` reads that one tensor from disk. Each file's handle stays
    open as long as one of its loaders is alive (it maps the file; nothing is read up front)."""
    for f in safetensors_files(src):
        h = safe_open(str(f), framework="pt", device="cpu")
        for name in h.keys():
            yield name, (lambda h=h, n=name: h.get_tensor(n))


def read_metadata(src: str | Path) -> Dict[str, str]:
    with safe_open(str(safetensors_files(src)[0]), framework="pt", device="cpu") as h:
        return dict(h.metadata() or {})


FROM_ST = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool}


def tensor_spec(src: str | Path, name: str):
    """(shape, dtype) of one tensor of a file or folder, without reading its data."""
    for f in safetensors_files(src):
        with safe_open(str(f), framework="pt", device="cpu") as h:
            if name in h.keys():
                sl = h.get_slice(name)
                return tuple(sl.get_shape()), FROM_ST[sl.get_dtype()]
    raise KeyError(name)


def parse_size(s: str | int) -> int:
    """'5GB', '500MB', '2GiB', 1000 -> bytes."""
    if isinstance(s, int):
        return s
    t = s.strip().upper()
    units = {"GIB": 2 ** 30, "MIB": 2 ** 20, "KIB": 2 ** 10, "GB": 10 ** 9, "MB": 10 ** 6, "KB": 10 ** 3, "B": 1}
    for u, m in units.items():
        if t.endswith(u):
            return int(float(t[: -len(u)]) * m)
    return int(t)


_ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
              torch.uint8: "U8", torch.bool: "BOOL"}


class ShardedWriter:
    """Sharded safetensors written straight to disk, tensor by tensor.

    The shard plan (which tensor goes to which file) is fixed up front from `specs`
    [(name, shape, dtype)] in write order: shards of at most `max_shard_bytes` (a larger tensor
    gets one of its own). Each shard's header is written when its first tensor arrives and every
    tensor's bytes go to the file as they come, so the writer holds no tensor: peak memory is
    the caller's current tensor. Files are model-0000i-of-0000N.safetensors plus
    model.safetensors.index.json; they carry a .tmp suffix until close(), so a crash leaves no
    folder that looks complete."""

    def __init__(self, out: str | Path, max_shard_bytes: int, specs, metadata: Optional[Dict[str, str]] = None):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.meta = {"format": "pt", **(metadata or {})}
        self.plan: List[List[Tuple[str, Tuple[int, ...], torch.dtype]]] = []
        size = 0
        for name, shape, dtype in specs:
            n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if not self.plan or (self.plan[-1] and size + n > max_shard_bytes):
                self.plan.append([])
                size = 0
            self.plan[-1].append((name, tuple(int(x) for x in shape), dtype))
            size += n
        self.order = [(i, spec) for i, shard in enumerate(self.plan) for spec in shard]
        self.pos = 0
        self.f = None
        self.cur = -1
        self.total_bytes = 0

    def _name(self, i: int) -> str:
        return f"model-{i + 1:05d}-of-{len(self.plan):05d}.safetensors"

    def _open(self, i: int) -> None:
        if self.f:
            self.f.close()
        header, off = {"__metadata__": self.meta}, 0
        for name, shape, dtype in self.plan[i]:
            n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * (-len(h) % 8)
        self.f = open(self.out / (self._name(i) + ".tmp"), "wb")
        self.f.write(struct.pack("<Q", len(h)) + h)
        self.cur = i

    def add(self, name: str, t: torch.Tensor) -> None:
        if self.pos >= len(self.order):
            raise ValueError(f"{name}: more tensors than planned")
        i, (want, shape, dtype) = self.order[self.pos]
        if name != want or tuple(t.shape) != shape or t.dtype != dtype:
            raise ValueError(f"expected {want} {shape} {dtype}, got {name} {tuple(t.shape)} {t.dtype}")
        if i != self.cur:
            self._open(i)
        t = t.contiguous()
        if t.numel():
            self.f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        self.total_bytes += t.numel() * t.element_size()
        self.pos += 1

    def close(self) -> List[Path]:
        if self.f:
            self.f.close()
        if self.pos != len(self.order):
            raise ValueError(f"{len(self.order) - self.pos} planned tensors were not written")
        final, weight_map = [], {}
        for i, shard in enumerate(self.plan):
            os.replace(self.out / (self._name(i) + ".tmp"), self.out / self._name(i))
            final.append(self.out / self._name(i))
            weight_map.update({name: self._name(i) for name, _, _ in shard})
        # Always an index, even for one shard: one layout for every model size.
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out / INDEX).write_text(json.dumps(index, indent=2))
        return final
