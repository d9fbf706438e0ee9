"""Resume a DeepSpeed ZeRO-1/2/3 checkpoint on another data-parallel and/or tensor-parallel
size (docs/export.md, "Resuming under another layout").

DeepSpeed's own load_checkpoint needs the DP size the state was partitioned for. Its universal
checkpoint is an offline conversion that writes a second copy of the whole state, with loaders
that unpickle with weights_only=False. Here the engine is built for the new layout as usual,
then every rank fills its own partitions straight from the old files:
- the fp32 master, exp_avg and exp_avg_sq of each trainable parameter are read as full
  (TP-local) tensors by export.ds_reader.ZeroCheckpoint, one tensor at a time, with seek +
  read of the bytes that tensor needs. Peak memory per rank is one parameter (times 3), never
  the state.
- ZeRO-3: each rank keeps the slice [rank * part, (rank + 1) * part) of the flattened tensor
  (zero-padded at the end, as DeepSpeed pads), for the master and both moments through
  DeepSpeed's public safe_set_local_* API, and for the module's own partition (ds_tensor).
  ZeRO-1/2: safe_set_full_* (DeepSpeed cuts the rank's fragment), and the module parameter,
  which every rank holds whole, is copied.
- Frozen parameters and buffers: the stored value, into the module.
- Adam's step count, the LR scheduler and DeepSpeed's step counters come from the old files
  too, so the learning rate and bias correction continue where they stopped.
No collective is needed: every rank reads what it needs. The cost is reading: each rank reads
the whole (TP-local) checkpoint once per state.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger("hydra_dist")


def _local_slice(full: torch.Tensor, part: int, rank: int) -> torch.Tensor:
    flat = full.reshape(-1)
    out = torch.zeros(part, dtype=flat.dtype)
    lo, hi = rank * part, min((rank + 1) * part, flat.numel())
    if hi > lo:
        out[: hi - lo] = flat[lo:hi]
    return out


def _ensure_adam_state(zero_opt) -> None:
    """Create Adam's state where the optimizer has not taken a step yet (ZeRO-3 creates it
    lazily, at the first step), as torch's Adam would: step 0, zero moments. The values are
    overwritten right after; the point is that the tensors exist to be filled. ZeRO-3 hands
    its fp32 partitions to the torch optimizer only during step(), so they are taken from it."""
    opt = zero_opt.optimizer
    flats = getattr(zero_opt, "fp32_partitioned_groups_flat", None) or \
        [p for g in opt.param_groups for p in g["params"]]
    for p in flats:
        st = opt.state[p]
        if "exp_avg" not in st:
            st["step"] = torch.tensor(0.0, dtype=torch.float32)
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def link_optimizer_state(zero_opt) -> None:
    """ZeRO-1/2 link each parameter to its slice of the Adam state only after the first step,
    so DeepSpeed's safe_{get,set}_full_optimizer_state fail before it. Link now, with
    DeepSpeed's own function (the step links the same tensors again, harmlessly). ZeRO-3 needs
    no linking."""
    from deepspeed.utils.mixed_precision_linkage import lazy_init_hp_params_optimizer_state
    if hasattr(zero_opt, "bit16_groups") and hasattr(zero_opt, "single_partition_of_fp32_groups"):
        for lp, flat in zip(zero_opt.bit16_groups, zero_opt.single_partition_of_fp32_groups):
            lazy_init_hp_params_optimizer_state(lp, flat, zero_opt.optimizer.state)


def _scheduler_and_counters(folder: Path) -> dict:
    from hydra_dist.export.ds_reader import load_meta
    ms = sorted(folder.glob("*model_states.pt"))
    meta = load_meta(ms[0])   # plain Python values; no tensor bytes are read
    return {k: meta.get(k) for k in ("lr_scheduler", "global_steps", "global_samples", "skipped_steps")}


def load_resharded(engine, folder: Path, zero_stage: int, tp: int, tp_rank: int) -> None:
    """Fill `engine` (built for this run's layout: TP size tp, this rank tp_rank) from the ZeRO
    checkpoint in `folder`, saved with the same ZeRO stage under another DP and/or TP size. A
    TP change merges the saved TP slices of a tensor and cuts this rank's slice
    (export/partition.py, the rule export and import use); Adam's moments follow their
    parameter's layout, element for element, so they are cut the same way."""
    from hydra_dist.models.partition import split_tp
    from deepspeed.utils import (safe_set_full_fp32_param, safe_set_full_optimizer_state,
                                 safe_set_local_fp32_param, safe_set_local_optimizer_state)

    from hydra_dist.export.ds_reader import ZeroCheckpoint
    readers = {k: ZeroCheckpoint(folder, state=k) for k in ("fp32", "exp_avg", "exp_avg_sq")}
    master = readers["fp32"]

    def value(key: str, name: str) -> torch.Tensor:
        r = readers[key]
        if r.tp == tp:
            return r.load_tp_local(name, tp_rank)
        return split_tp(name, r.load(name), tp, tp_rank)

    stored = set(master.names())
    dp_rank = dist.get_rank(engine.optimizer.dp_process_group) if dist.is_initialized() else 0
    names = dict(engine.module.named_parameters())
    _ensure_adam_state(engine.optimizer)
    link_optimizer_state(engine.optimizer)
    missing = sorted(set(names) - stored)
    if missing:
        raise RuntimeError(f"{folder}: no stored value for {len(missing)} parameters of this "
                           f"model, e.g. {missing[:3]} (another model?)")
    for name, p in names.items():
        full = value("fp32", name)
        if full.numel() != (getattr(p, "ds_numel", None) or p.numel()):
            raise RuntimeError(f"{folder}: {name} holds {full.numel()} values for this rank, the "
                               f"model has {getattr(p, 'ds_numel', None) or p.numel()}")
        if zero_stage == 3:
            part = p.ds_tensor.numel()
            local = _local_slice(full, part, dp_rank)
            if p.requires_grad:
                safe_set_local_fp32_param(p, local.to(p.ds_tensor.device))
                for key in ("exp_avg", "exp_avg_sq"):
                    m = _local_slice(value(key, name), part, dp_rank)
                    safe_set_local_optimizer_state(p, m.to(p.ds_tensor.device), key)
            p.ds_tensor.data.copy_(local.to(p.ds_tensor.dtype))
        else:
            if p.requires_grad:
                safe_set_full_fp32_param(p, full.to(p.device))
                for key in ("exp_avg", "exp_avg_sq"):
                    safe_set_full_optimizer_state(p, value(key, name).to(p.device), key)
            with torch.no_grad():
                p.data.copy_(full.view(p.shape).to(p.dtype))
    for name, b in engine.module.named_buffers():
        if name in stored:
            with torch.no_grad():
                b.copy_(value("fp32", name).view(b.shape).to(b.dtype))
    step = master.adam_step()
    opt = engine.optimizer.optimizer   # the torch optimizer DeepSpeed wraps
    for st in list(opt.state.values()):
        if "step" in st:
            st["step"] = torch.full_like(st["step"], step) if torch.is_tensor(st["step"]) else step
    # The learning rate in use lives in the param groups (the scheduler only sets it at its
    # next step): take them as saved, with their names checked so no group gets another's.
    saved_groups = master.param_groups()
    if len(saved_groups) != len(opt.param_groups):
        raise RuntimeError(f"{folder}: {len(saved_groups)} optimizer groups saved, this model "
                           f"has {len(opt.param_groups)}")
    for g, sg in zip(opt.param_groups, saved_groups):
        if g.get("name") != sg.get("name"):
            raise RuntimeError(f"{folder}: optimizer group {sg.get('name')!r} saved where this "
                               f"model has {g.get('name')!r}")
        g.update({k: v for k, v in sg.items() if k != "params"})
    info = _scheduler_and_counters(folder)
    if engine.lr_scheduler is not None and info["lr_scheduler"] is not None:
        engine.lr_scheduler.load_state_dict(info["lr_scheduler"])
    engine.global_steps = int(info["global_steps"] or 0)
    engine.global_samples = int(info["global_samples"] or 0)
    engine.skipped_steps = int(info["skipped_steps"] or 0)
    n = sum(getattr(p, "ds_numel", None) or math.prod(p.shape) for p in names.values())
    log.info("resharded %s onto DP rank %d: %d parameters (%.1f M values), fp32 masters and Adam "
             "moments from the ZeRO-%d files, Adam step %d", folder, dp_rank, len(names), n / 1e6,
             zero_stage, step)


def load_resharded_zero0(engine, folder: Path, tp: int, tp_rank: int) -> None:
    """ZeRO-0 (fp32: DeepSpeed steps the torch optimizer itself, whole state on every replica)
    saved under another TP size. Weights come TP-merged from the module states
    (export.ds_reader.ZeroCheckpoint); the torch optimizer's state in each mp_rank file is read
    tensor by tensor (seek + read). Its indices follow param_groups(), which orders the same
    parameters the same way on every TP size, so index i is the same name in both layouts
    (checked by count and shape)."""
    from hydra_dist.export.ds_reader import OnDisk, ZeroCheckpoint, load_meta
    from hydra_dist.models.partition import merge_tp, split_tp
    weights = ZeroCheckpoint(folder, state="fp32")
    files = [folder / f"mp_rank_{t:02d}_model_states.pt" for t in range(weights.tp)]
    metas = [load_meta(f) for f in files]
    opt = engine.optimizer
    by_id = {id(p): n for n, p in engine.module.named_parameters()}
    order = [by_id[id(p)] for g in opt.param_groups for p in g["params"]]
    saved = [m["optimizer"] for m in metas]
    if saved[0] is None:
        raise RuntimeError(f"{folder}: mp_rank_00_model_states.pt holds no optimizer state")
    n_saved = sum(len(g["params"]) for g in saved[0]["param_groups"])
    if n_saved != len(order):
        raise RuntimeError(f"{folder}: {n_saved} parameters in the saved optimizer, this model "
                           f"has {len(order)}")

    def read(f: Path, meta_t: torch.Tensor) -> torch.Tensor:
        out = torch.empty(meta_t.shape, dtype=meta_t.dtype)
        OnDisk.of(f, meta_t).read_into(0, out.view(-1))
        return out

    stored = set(weights.names())
    missing = sorted(n for n, _ in engine.module.named_parameters() if n not in stored)
    if missing:
        raise RuntimeError(f"{folder}: no stored value for {len(missing)} parameters of this "
                           f"model, e.g. {missing[:3]} (another model?)")
    with torch.no_grad():
        for name, t in list(engine.module.named_parameters()) + list(engine.module.named_buffers()):
            if name in stored:
                full = split_tp(name, weights.load(name), tp, tp_rank)
                t.copy_(full.view(t.shape).to(t.dtype))
    params = [p for g in opt.param_groups for p in g["params"]]
    state = {}
    for i, name in enumerate(order):
        per = [so["state"].get(i) for so in saved]
        if not per[0]:
            continue
        st = {"step": read(files[0], per[0]["step"])}
        for k in ("exp_avg", "exp_avg_sq"):
            st[k] = split_tp(name, merge_tp(name, [read(f, s[k]) for f, s in zip(files, per)]),
                             tp, tp_rank)
            if st[k].shape != params[i].shape:
                raise RuntimeError(f"{folder}: the saved {k} of optimizer parameter {i} has shape "
                                   f"{tuple(st[k].shape)} for TP rank {tp_rank}, {name} has "
                                   f"{tuple(params[i].shape)}")
        state[i] = st
    sd = opt.state_dict()
    saved_groups = saved[0]["param_groups"]
    if [g.get("name") for g in saved_groups] != [g.get("name") for g in sd["param_groups"]]:
        raise RuntimeError(f"{folder}: optimizer groups {[g.get('name') for g in saved_groups]} "
                           f"saved, this model has {[g.get('name') for g in sd['param_groups']]}")
    for g, sg in zip(sd["param_groups"], saved_groups):
        g.update({k: v for k, v in sg.items() if k != "params"})
    sd["state"] = state
    opt.load_state_dict(sd)
    if engine.lr_scheduler is not None and metas[0].get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(metas[0]["lr_scheduler"])
    engine.global_steps = int(metas[0].get("global_steps") or 0)
    engine.global_samples = int(metas[0].get("global_samples") or 0)
    engine.skipped_steps = int(metas[0].get("skipped_steps") or 0)
    log.info("resharded %s (ZeRO-0, tp=%d) onto TP rank %d of %d: %d parameters, %d with Adam "
             "state", folder, weights.tp, tp_rank, tp, len(order), len(state))
