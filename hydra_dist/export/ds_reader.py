"""Streaming reader of DeepSpeed ZeRO 0/1/2/3 checkpoints: full fp32 tensors one at a time,
with no GPU, no process group and no model built.

How (the format is DeepSpeed's, see deepspeed/utils/zero_to_fp32.py; the reader is ours):
- Every .pt file is opened with torch.load(map_location="meta", weights_only=True): only the
  pickled structure is read, each tensor comes back as a meta tensor whose storage knows its
  byte offset in the file (`_checkpoint_offset`). Tensor bytes are then read with plain
  seek + readinto, only for the slice a parameter needs. Peak memory is the largest merged
  tensor (plus its TP shards when tp > 1), not the checkpoint.
- weights_only: the model_states files load as they are; the optim_states files pickle two
  DeepSpeed objects (ZeroStageEnum, LossScaler). Rather than weights_only=False (arbitrary code
  execution from a file), those classes are allow-listed with torch.serialization.safe_globals;
  any other global in a file is refused by torch with its name.
- ZeRO-3: each DP rank's optim file holds `fp32_flat_groups`, its partition of every
  trainable parameter, laid out parameter after parameter (param_shapes order, the groups
  concatenated); parameter p has ceil(numel/dp) elements on every rank, the last rank padded.
  Frozen parameters are partitioned the same way in the model_states files
  (`frozen_param_fragments`).
- ZeRO-1/2: per param group, the ranks' `single_partition_of_fp32_groups` concatenated form
  one flat vector holding the group's parameters back to back (with `param_alignment_paddings`
  when recorded). Frozen parameters are whole in the (single) model_states file.
- ZeRO-0: model_states' `module` holds the full parameters.
- TP > 1: each TP rank (mp_rank_XX) is consolidated as above and the slices are concatenated
  along the partition dim of hydra_dist.models.partition; replicated tensors come from rank 0.
  Tested on real ZeRO-3 TP=1 and TP=2 runs (tests/export/test_export_parity.py,
  test_export_layouts.py).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from hydra_dist.models.partition import merge_tp

_OPTIM_RE = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
_MODEL_Z3_RE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_(\d+)_model_states\.pt$")
_MODEL_RE = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")


def is_deepspeed_checkpoint(folder: Path) -> bool:
    return any(_OPTIM_RE.search(p.name) or _MODEL_Z3_RE.search(p.name) or _MODEL_RE.match(p.name)
               for p in Path(folder).iterdir())


def _ds_safe_globals() -> list:
    out = []
    try:
        from deepspeed.runtime.zero.config import ZeroStageEnum
        out.append(ZeroStageEnum)
    except ImportError:
        pass
    try:
        from deepspeed.utils.tensor_fragment import fragment_address  # ZeRO-1/2 optim states
        out.append(fragment_address)
    except ImportError:
        pass
    try:
        from deepspeed.runtime.fp16 import loss_scaler
        out += [getattr(loss_scaler, n) for n in ("LossScaler", "DynamicLossScaler") if hasattr(loss_scaler, n)]
    except ImportError:
        pass
    return out


def load_meta(path: Path):
    """The file's structure with meta tensors (no tensor bytes read)."""
    with torch.serialization.safe_globals(_ds_safe_globals()):
        return torch.load(path, map_location="meta", weights_only=True)


@dataclass
class OnDisk:
    """A contiguous tensor's bytes in a file."""
    path: Path
    offset: int          # byte offset of element 0
    numel: int
    dtype: torch.dtype

    @classmethod
    def of(cls, path: Path, t: torch.Tensor) -> "OnDisk":
        if not t.is_contiguous():
            raise ValueError(f"{path}: non-contiguous tensor in checkpoint")
        st = t.untyped_storage()
        base = getattr(st, "_checkpoint_offset", None)
        if base is None:
            raise RuntimeError("this torch does not record storage offsets on meta loads (needs torch >= 2.6)")
        return cls(path, base + t.storage_offset() * t.element_size(), t.numel(), t.dtype)

    def read_into(self, start: int, out: torch.Tensor) -> None:
        """Elements [start, start + out.numel()) into `out` (same dtype, contiguous)."""
        n = out.numel()
        if start < 0 or start + n > self.numel:
            raise ValueError(f"{self.path}: read [{start}, {start + n}) outside {self.numel} elements")
        es = out.element_size()
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * es)
            view = out.view(torch.uint8).numpy()
            got = f.readinto(view)
        if got != n * es:
            raise IOError(f"{self.path}: short read ({got} of {n * es} bytes)")


class Virtual:
    """Several on-disk flat tensors seen as one concatenated vector."""

    def __init__(self, parts: List[OnDisk]):
        self.parts = parts
        self.starts = [0]
        for p in parts:
            self.starts.append(self.starts[-1] + p.numel)
        self.numel = self.starts[-1]
        self.dtype = parts[0].dtype if parts else torch.float32

    def read_into(self, start: int, out: torch.Tensor) -> None:
        n, pos, done = out.numel(), start, 0
        if start + n > self.numel:
            raise ValueError(f"read [{start}, {start + n}) beyond {self.numel} elements")
        for i, p in enumerate(self.parts):
            lo, hi = self.starts[i], self.starts[i + 1]
            if pos >= hi or done == n:
                continue
            k = min(hi - pos, n - done)
            p.read_into(pos - lo, out[done:done + k])
            pos, done = pos + k, done + k


@dataclass
class ParamLoc:
    """Where one full (TP-local) parameter lives: a list of (source, start) pieces of `chunk`
    elements each, concatenated then cut to numel (ZeRO-3), or one range (ZeRO-1/2/0)."""
    shape: Tuple[int, ...]
    pieces: List[Tuple[object, int, int]]   # (Virtual or OnDisk, start, count)
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def load(self) -> torch.Tensor:
        total = sum(c for _, _, c in self.pieces)
        buf = torch.empty(total, dtype=self.dtype)
        pos = 0
        for src, start, count in self.pieces:
            src.read_into(start, buf[pos:pos + count])
            pos += count
        return buf[: self.numel].view(self.shape)


def _shape(s) -> Tuple[int, ...]:
    return tuple(int(x) for x in s)


STATES = ("fp32", "exp_avg", "exp_avg_sq")


class ZeroCheckpoint:
    """One DeepSpeed checkpoint folder (a `stepNNNNNNNN` tag). state: what to read per
    parameter: the fp32 master ("fp32", with frozen parameters and buffers as stored) or an Adam
    moment ("exp_avg", "exp_avg_sq": trainable parameters only). DeepSpeed lays each moment out
    exactly like the fp32 flat partition it belongs to, so the same offsets apply."""

    def __init__(self, folder: str | Path, state: str = "fp32"):
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        self.folder, self.state = Path(folder), state
        optim = {}
        for p in self.folder.iterdir():
            m = _OPTIM_RE.search(p.name)
            if m:
                optim[(int(m.group(2)), int(m.group(1)))] = p  # (mp, dp)
        self.optim = optim
        self.tp = 1 + max((mp for mp, _ in optim), default=0)
        if not optim:
            self.tp = 1 + max((int(m.group(1)) for p in self.folder.iterdir()
                               if (m := _MODEL_RE.match(p.name))), default=-1)
            if self.tp == 0:
                raise FileNotFoundError(f"{self.folder}: no DeepSpeed model or optimizer states")
        self.dp = len(optim) // self.tp if optim else 1
        self._locs = [self._consolidate(mp) for mp in range(self.tp)]
        first = self._locs[0]
        for mp, locs in enumerate(self._locs[1:], 1):
            if list(locs) != list(first):
                raise ValueError(f"{self.folder}: TP rank {mp} holds other parameters than rank 0")
        self.zero_stage = self._stage

    # -- layout ------------------------------------------------------------------------
    def _model_state_files(self, mp: int) -> List[Path]:
        z3 = sorted(((int(m.group(1)), p) for p in self.folder.iterdir()
                     if (m := _MODEL_Z3_RE.search(p.name)) and int(m.group(2)) == mp))
        if z3:
            return [p for _, p in z3]
        single = self.folder / f"mp_rank_{mp:02d}_model_states.pt"
        if not single.is_file():
            raise FileNotFoundError(f"{self.folder}: no model states for mp rank {mp}")
        return [single]

    def _consolidate(self, mp: int) -> Dict[str, ParamLoc]:
        model_files = self._model_state_files(mp)
        ms = [load_meta(p) for p in model_files]
        locs: Dict[str, ParamLoc] = {}
        if not self.optim:  # ZeRO-0: full tensors in module
            self._stage = 0
            for name, t in ms[0]["module"].items():
                if isinstance(t, torch.Tensor):   # megatron layers add `_extra_state: None`
                    locs[name] = ParamLoc(_shape(t.shape), [(OnDisk.of(model_files[0], t), 0, t.numel())], t.dtype)
            return locs
        opt_files = [self.optim[(mp, dp)] for dp in range(self.dp)]
        osd = [load_meta(p)["optimizer_state_dict"] for p in opt_files]
        stage = int(osd[0]["zero_stage"])
        self._stage = stage
        world = osd[0]["partition_count"]
        world = max(world) if isinstance(world, list) else int(world)
        if world != self.dp:
            raise ValueError(f"{self.folder}: partition_count {world} but {self.dp} optim files for mp rank {mp}")
        param_shapes = ms[0]["param_shapes"]
        W = self.dp
        if stage == 3:
            per_rank = [Virtual([OnDisk.of(f, t) for t in self._flat(o, "fp32_flat_groups",
                                                                      "optimizer_state_dict")])
                        for f, o in zip(opt_files, osd)]
            off = 0
            for group in param_shapes:
                for name, shape in group.items():
                    shape = _shape(shape)
                    chunk = math.ceil(math.prod(shape) / W)
                    locs[name] = ParamLoc(shape, [(v, off, chunk) for v in per_rank], per_rank[0].dtype)
                    off += chunk
            if off * W != sum(v.numel for v in per_rank):
                raise ValueError(f"{self.folder}: consumed {off * W} of {sum(v.numel for v in per_rank)} elements")
            frozen = (ms[0].get("frozen_param_shapes") or {}) if self.state == "fp32" else {}
            for name, shape in frozen.items():
                shape = _shape(shape)
                frags = [OnDisk.of(f, m["frozen_param_fragments"][name]) for f, m in zip(model_files, ms)]
                locs[name] = ParamLoc(shape, [(fr, 0, fr.numel) for fr in frags], frags[0].dtype)
        else:
            flats = [self._flat(o, "single_partition_of_fp32_groups", "base_optimizer_state")
                     for o in osd]
            paddings = osd[0].get("param_alignment_paddings")
            for g, group in enumerate(param_shapes):
                vec = Virtual([OnDisk.of(f, fl[g]) for f, fl in zip(opt_files, flats)])
                off = 0
                for i, (name, shape) in enumerate(group.items()):
                    shape = _shape(shape)
                    n = math.prod(shape)
                    locs[name] = ParamLoc(shape, [(vec, off, n)], vec.dtype)
                    off += n + (paddings[g][i] if paddings is not None else 0)
                align = 2 * W
                if align * math.ceil(off / align) != align * math.ceil(vec.numel / align):
                    raise ValueError(f"{self.folder}: group {g} consumed {off} of {vec.numel} elements")
            if self.state != "fp32":  # moments exist for trainable parameters only
                return locs
            frozen = ms[0].get("frozen_param_shapes") or {}
            for name, shape in frozen.items():
                t = ms[0]["frozen_param_fragments"][name]
                locs[name] = ParamLoc(_shape(shape), [(OnDisk.of(model_files[0], t), 0, t.numel())], t.dtype)
            # ZeRO-1 writes no frozen_param_* (DeepSpeed does only when gradients are
            # partitioned, stage 2): a frozen parameter's one copy is then the module state dict.
            buffers = set(ms[0].get("buffer_names") or [])
            for name, t in ms[0]["module"].items():
                if name not in locs and name not in buffers and isinstance(t, torch.Tensor):
                    locs[name] = ParamLoc(_shape(t.shape), [(OnDisk.of(model_files[0], t), 0, t.numel())], t.dtype)
        for name in ms[0].get("buffer_names") or []:
            t = ms[0]["module"][name]
            locs[name] = ParamLoc(_shape(t.shape), [(OnDisk.of(model_files[0], t), 0, t.numel())], t.dtype)
        for alias, target in (ms[0].get("shared_params") or {}).items():
            if target in locs:
                locs[alias] = locs[target]
        return locs

    def _flat(self, osd: dict, fp32_key: str, optim_key: str) -> list:
        """The flat partitions (one per group) of what self.state names, in one optim file."""
        if self.state == "fp32":
            return osd[fp32_key]
        state = osd[optim_key]["state"]
        return [state[i][self.state] for i in range(len(osd[fp32_key]))]

    def param_groups(self) -> list:
        """The optimizer's param groups as saved (lr, betas, weight decay, ...; no tensors)."""
        osd = load_meta(self.optim[(0, 0)])["optimizer_state_dict"]
        base = osd["optimizer_state_dict" if self._stage == 3 else "base_optimizer_state"]
        return base["param_groups"]

    def adam_step(self) -> float:
        """Adam's step count (optimizer updates taken), as the first group's state holds it."""
        f = self.optim[(0, 0)]
        osd = load_meta(f)["optimizer_state_dict"]
        base = osd["optimizer_state_dict" if self._stage == 3 else "base_optimizer_state"]
        out = torch.empty(1, dtype=torch.float32)
        OnDisk.of(f, base["state"][0]["step"].reshape(1)).read_into(0, out)
        return float(out.item())

    # -- reading -----------------------------------------------------------------------
    def layout(self) -> dict:
        return {"engine": "deepspeed", "zero_stage": self.zero_stage, "dp": self.dp, "tp": self.tp}

    def names(self) -> List[str]:
        return list(self._locs[0])

    def shape(self, name: str) -> Tuple[int, ...]:
        from hydra_dist.models.partition import partition_dim
        s = list(self._locs[0][name].shape)
        d = partition_dim(name)
        if self.tp > 1 and d is not None:
            s[d] *= self.tp
        return tuple(s)

    def dtype(self, name: str) -> torch.dtype:
        return self._locs[0][name].dtype

    def numel(self, name: str) -> int:
        return math.prod(self.shape(name))

    def load(self, name: str) -> torch.Tensor:
        """The full fp32 (as stored) tensor, TP slices merged."""
        return merge_tp(name, [locs[name].load() for locs in self._locs])

    def load_tp_local(self, name: str, mp: int) -> torch.Tensor:
        """TP rank mp's own slice, as that rank's module holds it (resharding over DP)."""
        return self._locs[mp][name].load()

    def items(self, names: Optional[List[str]] = None) -> Iterator[Tuple[str, torch.Tensor]]:
        for n in names or self.names():
            yield n, self.load(n)
