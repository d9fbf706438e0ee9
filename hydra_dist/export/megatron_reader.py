"""Streaming reader of megatron-engine checkpoints (parallel/megatron_engine.py): full fp32
tensors one at a time, with no GPU, no process group and no model built.

The layout: one `model_ppXX_tpYY.safetensors` per (pipeline rank, TP rank), written by DP
rank 0 (DP replicas are identical), with {"tp", "pp", "virtual_pp"} in its metadata. Pipeline
rank p holds the model chunks p, p + pp, ... (virtual_pp of them; chunk c's LLM layers are
partition.chunk_layers(L, c, pp * virtual_pp)); chunk 0 also holds the vision tower and
the embedding, the last chunk the final norm, the LM head and the flow head.

Names: the stages name their layers with global indices today (`llm.layers.5.*`, exactly
HydraModel's names). A file whose layers are numbered from 0 within its stage (virtual_pp = 1
only: with several chunks per file such names would collide) is mapped back to global indices
with chunk_layers. Anything else is refused with the file and the layers expected.

TP: every TP rank's file holds the same names; partitioned tensors are concatenated along
hydra_dist.models.partition's dim, replicated ones come from TP rank 0.

Memory: safetensors' safe_open maps a file and reads only the tensor asked for; the handle is
closed after each read. load() fills one preallocated full tensor shard by shard, so the peak is
one merged tensor plus one TP shard.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from safetensors import safe_open

from hydra_dist.models.partition import chunk_layers, partition_dim

from .st_io import FROM_ST

MODEL_RE = re.compile(r"^model_pp(\d+)_tp(\d+)\.safetensors$")
_LAYER_RE = re.compile(r"^llm\.layers\.(\d+)\.(.+)$")


def is_megatron_checkpoint(folder: Path) -> bool:
    return any(MODEL_RE.match(p.name) for p in Path(folder).iterdir())


class MegatronCheckpoint:
    """One megatron-engine checkpoint folder (a `stepNNNNNNNN` tag)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        files: Dict[Tuple[int, int], Path] = {}
        for p in self.folder.iterdir():
            m = MODEL_RE.match(p.name)
            if m:
                files[(int(m.group(1)), int(m.group(2)))] = p
        if not files:
            raise FileNotFoundError(f"{self.folder}: no model_ppXX_tpYY.safetensors files")
        self.files = files
        # The layout each file records, not the highest file numbers: a lost last stage's files
        # must read as missing, not as a smaller layout.
        self.tp, self.pp, self.virtual_pp = self._recorded_layout()
        want = {(p, t) for p in range(self.pp) for t in range(self.tp)}
        missing = [f"model_pp{p:02d}_tp{t:02d}.safetensors" for p, t in sorted(want - set(files))]
        if missing:
            raise FileNotFoundError(f"{self.folder}: missing {', '.join(missing)} "
                                    f"(the files record tp={self.tp} pp={self.pp})")
        extra = [files[k].name for k in sorted(set(files) - want)]
        if extra:
            raise ValueError(f"{self.folder}: {', '.join(extra)} beyond the recorded "
                             f"tp={self.tp} pp={self.pp}")
        # global name -> (pp rank, name inside that rank's files); shapes/dtypes per TP rank
        self._where: Dict[str, Tuple[int, str]] = {}
        self._specs: Dict[str, List[Tuple[Tuple[int, ...], torch.dtype]]] = {}
        headers = {key: self._header(path) for key, path in files.items()}
        per_rank_layers = {p: self._layer_ids(headers[(p, 0)]) for p in range(self.pp)}
        self.num_layers = sum(len(ids) for ids in per_rank_layers.values())
        for p in range(self.pp):
            rename = self._layer_map(p, per_rank_layers[p])
            names0 = list(headers[(p, 0)])
            for t in range(1, self.tp):
                if sorted(headers[(p, t)]) != sorted(names0):
                    raise ValueError(f"{files[(p, t)]}: holds other tensors than {files[(p, 0)].name}")
            for local in names0:
                name = rename(local)
                if name in self._where:
                    other = files[(self._where[name][0], 0)].name
                    raise ValueError(f"{files[(p, 0)]}: {name} is also in {other}")
                self._where[name] = (p, local)
                self._specs[name] = [headers[(p, t)][local] for t in range(self.tp)]
        for name, specs in self._specs.items():
            self._check_tp_shapes(name, specs)

    # -- layout ------------------------------------------------------------------------
    def _header(self, path: Path) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
        with safe_open(str(path), framework="pt", device="cpu") as h:
            out = {}
            for n in h.keys():
                sl = h.get_slice(n)
                out[n] = (tuple(sl.get_shape()), FROM_ST[sl.get_dtype()])
            return out

    def _recorded_layout(self) -> Tuple[int, int, int]:
        """(tp, pp, virtual_pp) from the files' `layout` metadata, which must agree."""
        seen = None
        for path in sorted(self.files.values()):
            with safe_open(str(path), framework="pt", device="cpu") as h:
                raw = (h.metadata() or {}).get("layout")
            if raw is None:
                raise ValueError(f"{path}: no 'layout' metadata (not written by the megatron engine)")
            lay = json.loads(raw)
            this = (int(lay["tp"]), int(lay["pp"]), int(lay.get("virtual_pp", 1)))
            if seen is not None and this != seen[1]:
                raise ValueError(f"{path}: layout tp/pp/virtual_pp {this}, but {seen[0].name} says {seen[1]}")
            seen = (path, this)
        return seen[1]

    @staticmethod
    def _layer_ids(header) -> List[int]:
        return sorted({int(m.group(1)) for n in header if (m := _LAYER_RE.match(n))})

    def _layer_map(self, p: int, found: List[int]):
        """name -> global name for pipeline rank p's files."""
        chunks = self.pp * self.virtual_pp
        want = sorted(i for v in range(self.virtual_pp)
                      for i in chunk_layers(self.num_layers, v * self.pp + p, chunks))
        path = self.files[(p, 0)]
        if found == want:
            return lambda n: n                      # global indices (what the engine writes)
        if self.virtual_pp == 1 and found == list(range(len(want))):
            offset = want[0]                       # stage-local indices: shift by the chunk start

            def rename(n: str) -> str:
                m = _LAYER_RE.match(n)
                return f"llm.layers.{int(m.group(1)) + offset}.{m.group(2)}" if m else n
            return rename
        raise ValueError(f"{path}: holds LLM layers {found}, but pipeline rank {p} of pp={self.pp}, "
                         f"virtual_pp={self.virtual_pp} ({self.num_layers} layers) holds {want}")

    def _check_tp_shapes(self, name: str, specs) -> None:
        """TP slices differ only along the partition dim; replicated tensors not at all."""
        d = partition_dim(name)
        s0, dt0 = specs[0]
        for t, (s, dt) in enumerate(specs[1:], 1):
            path = self.files[(self._where[name][0], t)]
            if len(s) != len(s0) or any(a != b for i, (a, b) in enumerate(zip(s, s0)) if i != d):
                raise ValueError(f"{path}: {name} has shape {s}, TP rank 0 has {s0}")
            if dt != dt0:
                raise ValueError(f"{path}: {name} is {dt}, TP rank 0 has {dt0}")

    # -- reading -----------------------------------------------------------------------
    def layout(self) -> dict:
        return {"engine": "megatron", "tp": self.tp, "pp": self.pp, "virtual_pp": self.virtual_pp}

    def names(self) -> List[str]:
        return list(self._where)

    def shape(self, name: str) -> Tuple[int, ...]:
        s = list(self._specs[name][0][0])
        d = partition_dim(name)
        if d is not None:
            s[d] = sum(spec[0][d] for spec in self._specs[name])
        return tuple(s)

    def dtype(self, name: str) -> torch.dtype:
        return self._specs[name][0][1]

    def numel(self, name: str) -> int:
        return math.prod(self.shape(name))

    def load(self, name: str) -> torch.Tensor:
        """The full tensor as stored, TP slices merged."""
        p, local = self._where[name]
        d = partition_dim(name)
        ranks = range(self.tp) if d is not None else range(1)  # replicated: TP rank 0's copy
        out = torch.empty(self.shape(name), dtype=self.dtype(name))
        off = 0
        for t in ranks:
            with safe_open(str(self.files[(p, t)]), framework="pt", device="cpu") as h:
                shard = h.get_tensor(local)
            if d is None:
                out.copy_(shard)
            else:
                out.narrow(d, off, shard.shape[d]).copy_(shard)
                off += shard.shape[d]
            del shard
        return out

    def items(self, names: Optional[List[str]] = None) -> Iterator[Tuple[str, torch.Tensor]]:
        for n in names or self.names():
            yield n, self.load(n)
