"""Atomic, resumable training checkpoints.

Layout under <run>/checkpoints:
  step00000020/          DeepSpeed shards (every rank writes its own), or with the megatron
                         engine model_ppXX_tpYY.safetensors + optim_ppXX_tpYY.pt per (pp, tp)
                         rank (parallel/megatron_engine.py; same save/load_checkpoint calls) +
    trainer_state.json   step, consumed samples/tokens, data position, MLflow run id
    rank_state/rankN.pt  RNG states of rank N (tensors and plain lists: weights_only loadable)
    extra_state.pt       optional replicated state outside the engine (save(extra=...))
    manifest.json        every file with its size and xxh3-64; written last, checked on
                         load (each rank hashes a share) and by hydra-export-hf
  latest                 the tag of the newest complete checkpoint
A save goes to .tmp-stepN and is renamed only after every rank finished, and `latest` moves only
after the rename: a crash mid-save leaves the previous checkpoint as latest.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist

from hydra_dist.export.manifest import MANIFEST, file_hash, verify, write_manifest

from .megatron_reshard import load_megatron_resharded
from .reshard import load_resharded, load_resharded_zero0

log = logging.getLogger("hydra_dist")

EXTRA = "extra_state.pt"
LAYOUT = "layout.json"
FULL_BELOW = 64 * 2 ** 20   # free bytes under which a failed write is taken for a full disk


def engine_layout(engine) -> Dict[str, Any]:
    """What a checkpoint's shards depend on: the engine, TP, PP, DP and the ZeRO stage."""
    from megatron.core import parallel_state as ps
    kind = getattr(engine, "kind", "deepspeed")
    stage = engine.zero_optimization_stage() if kind == "deepspeed" else 0
    return {"engine": kind, "tp": ps.get_tensor_model_parallel_world_size(),
            "pp": ps.get_pipeline_model_parallel_world_size(),
            "dp": ps.get_data_parallel_world_size(), "zero_stage": int(stage)}


def check_resume_layout(folder: Path, saved: Dict[str, Any], now: Dict[str, Any]) -> bool:
    """Resuming needs the same engine and, on the DeepSpeed engine, the same PP and ZeRO stage.
    A new DP size works on every engine: the megatron engine and ZeRO-0 hold whole state per
    replica, ZeRO-1/2/3 state is re-partitioned from the files (reshard.py), which also covers
    a new TP size under ZeRO-1/2/3; a ZeRO-0 TP change reads the module and torch-optimizer
    states by name (reshard.load_resharded_zero0). The megatron engine's state is found by name on any TP and
    PP size (megatron_reshard.py). True when re-partitioning is needed; a layout that cannot be
    resumed is refused here, before anything loads, naming both."""
    def fmt(x):
        return f"{x['engine']} tp={x['tp']} pp={x['pp']} dp={x['dp']} zero_stage={x['zero_stage']}"
    fresh = (f"start from its weights instead: hydra-export-hf {folder} OUT, then "
             "model.init_from=OUT (the optimizer and data order restart)")
    megatron = saved["engine"] == now["engine"] == "megatron"
    zero = now["engine"] == "deepspeed" and now["zero_stage"] > 0
    fixed = ("engine",) if megatron else ("engine", "pp", "zero_stage")
    if any(saved[k] != now[k] for k in fixed):
        what = "engine" if megatron else "engine, PP and ZeRO stage"
        raise RuntimeError(f"{folder}: saved as {fmt(saved)}, this run is {fmt(now)}; resuming "
                           f"needs the same {what}; {fresh}")
    if megatron or not zero:   # whole state per replica: only a TP / PP change re-partitions
        return saved["tp"] != now["tp"] or saved["pp"] != now["pp"]
    return saved["dp"] != now["dp"] or saved["tp"] != now["tp"]


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "python_pos": random.getstate()[2],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate((3, tuple(st["python"]), st["python_pos"]))
    n = st["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    if st["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _all_gather(obj) -> list:
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def hash_files(folder: Path) -> Dict[str, str]:
    """Every rank hashes every world-th file of the folder (all ranks see the same shared
    folder), the shares are gathered: each rank reads ~1/world of the checkpoint."""
    rank, world = _world()
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.is_file() and p.name != MANIFEST)
    mine = {rel: file_hash(folder / rel) for rel in files[rank::world]}
    return {k: v for part in _all_gather(mine) for k, v in part.items()}


def _safe_torch_load(path: str, map_location=None):
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    # fragment_address: ZeRO-1/2 optimizer states record where each parameter sits in the flat
    # partition with this plain named tuple.
    from deepspeed.utils.tensor_fragment import fragment_address
    with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum,
                                           fragment_address]):
        return torch.load(path, map_location=map_location, weights_only=True)


def use_safe_loader(engine) -> None:
    """DeepSpeed 0.19's TorchCheckpointEngine.load calls torch.load(weights_only=False), which
    runs whatever code a crafted .pt file carries. Give the engine a loader that unpickles only
    tensors, containers and the DeepSpeed classes its ZeRO optimizer states hold."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
    if type(engine.checkpoint_engine) is TorchCheckpointEngine:
        engine.checkpoint_engine.load = _safe_torch_load


def save_failure_cause(e: BaseException, root: Path) -> tuple[int, str]:
    """(errno, one-line cause) of a failed save, whatever type the writer raised it in: a real
    ENOSPC inside torch.save surfaces as RuntimeError("... file write failed") with no errno,
    so the chain is searched for an OSError and, failing that, the file system's free space is
    read: a write that fails on a nearly full file system is reported as the full disk."""
    seen, x = set(), e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno:
            return x.errno, x.strerror or os.strerror(x.errno)
        x = x.__cause__ or x.__context__
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = -1
    first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
    if 0 <= free < FULL_BELOW:
        return errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({free / 2 ** 20:.1f} MiB free; {type(e).__name__}: {first})"
    return errno.EIO, f"{type(e).__name__}: {first}"


class CheckpointManager:
    def __init__(self, root: Path, keep_last: int, rank: int):
        self.root, self.keep_last, self.rank = Path(root), keep_last, rank

    def latest(self) -> Optional[str]:
        f = self.root / "latest"
        if not f.is_file():
            return None
        tag = f.read_text().strip()
        # each rank checks its share of the files; every rank raises if any rank found a problem
        problems = [p for p in _all_gather(verify(self.root / tag, share=_world())) if p]
        problem = problems[0] if problems else None
        if problem:
            raise RuntimeError(f"latest checkpoint is damaged: {problem}")
        return tag

    def save(self, engine, step: int, trainer_state: Dict[str, Any],
             extra: Optional[Dict[str, Any]] = None) -> str:
        """extra: replicated state outside the engine (e.g. a GAN discriminator and its
        optimizer), written by rank 0 as extra_state.pt and covered by the manifest."""
        tag, tmp_tag = f"step{step:08d}", f".tmp-step{step:08d}"
        tmp = self.root / tmp_tag
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".tmp-step*"):  # this one, and any a crashed save left
                shutil.rmtree(stale, ignore_errors=True)
        _barrier()
        try:
            self._write(engine, step, tag, tmp, trainer_state, extra)
        except Exception as e:  # disk full, read-only, quota: say where, and what is still safe
            code, cause = save_failure_cause(e, self.root)
            prev = (self.root / "latest").read_text().strip() if (self.root / "latest").is_file() else None
            raise OSError(code, f"checkpoint save of step {step} into {tmp} failed on rank "
                          f"{self.rank}: {cause}; the latest complete "
                          f"checkpoint is still {self.root / prev if prev else 'none'}") from e
        _barrier()
        return tag

    def _write(self, engine, step, tag, tmp, trainer_state, extra) -> None:
        engine.save_checkpoint(str(self.root), tag=tmp.name, save_latest=False)
        from hydra_dist.faults import in_checkpoint_save
        in_checkpoint_save(step, self.rank, tmp)  # HYDRA_FAULT: reliability tests only
        layout = engine_layout(engine)  # every rank: it asks megatron's parallel state
        (tmp / "rank_state").mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), tmp / "rank_state" / f"rank{self.rank}.pt")
        _barrier()
        hashes = hash_files(tmp)   # every rank: a share each, gathered
        if self.rank == 0:
            if extra is not None:
                torch.save(extra, tmp / EXTRA)
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
            (tmp / LAYOUT).write_text(json.dumps(layout))
            write_manifest(tmp, hashes)
            final = self.root / tag
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            latest_tmp = self.root / "latest.tmp"
            latest_tmp.write_text(tag)
            latest_tmp.replace(self.root / "latest")
            self._prune(keep=tag)

    def _prune(self, keep: str) -> None:
        tags = sorted(p.name for p in self.root.glob("step*") if p.is_dir())
        for old in tags[: max(0, len(tags) - self.keep_last)]:
            if old != keep:
                shutil.rmtree(self.root / old, ignore_errors=True)

    def load(self, engine, tag: str) -> Dict[str, Any]:
        folder = self.root / tag
        reshard, now = False, engine_layout(engine)
        if (folder / LAYOUT).is_file():  # older checkpoints lack it
            saved = json.loads((folder / LAYOUT).read_text())
            reshard = check_resume_layout(folder, saved, now)
        if reshard and now["engine"] == "megatron":
            log.info("%s was saved with TP=%d PP=%d, this run has TP=%d PP=%d: filling each "
                     "stage's weights and Adam state from the files by name", folder, saved["tp"],
                     saved["pp"], now["tp"], now["pp"])
            from megatron.core import parallel_state as ps
            load_megatron_resharded(engine, folder, now["tp"], ps.get_tensor_model_parallel_rank())
        elif reshard and now["zero_stage"] == 0:
            log.info("%s was saved with TP=%d, this run has TP=%d: filling the ZeRO-0 weights "
                     "and Adam state from the files", folder, saved["tp"], now["tp"])
            from megatron.core import parallel_state as ps
            load_resharded_zero0(engine, folder, now["tp"], ps.get_tensor_model_parallel_rank())
        elif reshard:
            log.info("%s was saved with DP=%d TP=%d, this run has DP=%d TP=%d: re-partitioning "
                     "the ZeRO-%d state from the files", folder, saved["dp"], saved["tp"],
                     now["dp"], now["tp"], now["zero_stage"])
            from megatron.core import parallel_state as ps
            load_resharded(engine, folder, now["zero_stage"], now["tp"],
                           ps.get_tensor_model_parallel_rank())
        else:
            use_safe_loader(engine)
            load_path, _ = engine.load_checkpoint(str(self.root), tag=tag)
            if load_path is None:
                raise RuntimeError(f"{folder}: DeepSpeed found no checkpoint to load")
        rank_file = folder / "rank_state" / f"rank{self.rank}.pt"
        if rank_file.is_file():  # absent when the world size changed; RNG then restarts per seed
            set_rng_state(torch.load(rank_file, weights_only=True))
        return json.loads((folder / "trainer_state.json").read_text())

    def load_extra(self, tag: str) -> Optional[Dict[str, Any]]:
        """What save(extra=...) wrote, or None."""
        f = self.root / tag / EXTRA
        return torch.load(f, map_location="cpu", weights_only=True) if f.is_file() else None
