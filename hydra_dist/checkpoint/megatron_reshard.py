"""Resume a megatron-engine checkpoint on another TP and/or PP size (any DP size), keeping the
fp32 master weights, both Adam moments, Adam's step, the learning rates and the LR schedule
(docs/export.md, "Resuming under another layout").

The megatron engine saves per (pp, tp) rank: the weights (the fp32 masters under bf16) as
safetensors under HydraModel's global names, and the torch AdamW + LambdaLR state beside them
with the name of every optimizer parameter in the optimizer's order (`param_names`). Here the
engine is built for the new layout as usual, and every rank fills its own tensors by name:
- weights and masters: the export's streaming reader (export/megatron_reader.py) merges a
  tensor's old TP slices; this rank cuts its slice with the rule export and import use
  (models/partition.py). Which old pipeline rank held a layer does not matter: names are global.
- Adam's moments: the old optim files are opened memory-mapped; a parameter's moments are read
  from the old pipeline rank that held it, merged over the old TP ranks along the parameter's
  partition dim and cut for this rank like the parameter (element for element).
- the learning rates: each optimizer group takes the saved group of the same name (groups are
  named part.decay / part.no_decay, so a pipeline stage's groups are a subset of the model's);
  the scheduler continues at the saved step.
Peak memory per rank is one merged tensor (times the old TP size for moments), never the state;
no collective is needed. A checkpoint saved before `param_names` existed is refused, naming it.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, List

import torch

log = logging.getLogger("hydra_dist")

OPTIM_RE = re.compile(r"^optim_pp(\d+)_tp(\d+)\.pt$")


class OldOptimizerStates:
    """The optimizer files of a megatron-engine checkpoint: a parameter's Adam state by name,
    TP slices merged (memory-mapped: only the tensors asked for are read)."""

    def __init__(self, folder: Path, tp: int, pp: int):
        self.folder, self.tp = folder, tp
        self.files: Dict[tuple, dict] = {}
        self.where: Dict[str, tuple] = {}   # name -> (pp rank, {tp rank: optimizer index})
        for f in sorted(folder.iterdir()):
            m = OPTIM_RE.match(f.name)
            if m:
                self.files[(int(m.group(1)), int(m.group(2)))] = torch.load(
                    f, map_location="cpu", weights_only=True, mmap=True)
        want = {(p, t) for p in range(pp) for t in range(tp)}
        if set(self.files) != want:
            raise FileNotFoundError(f"{folder}: optimizer files for (pp, tp) {sorted(want - set(self.files))} "
                                    f"are missing (the weights record tp={tp} pp={pp})")
        for (p, t), sd in sorted(self.files.items()):
            names = sd.get("param_names")
            if names is None:
                raise RuntimeError(f"{folder}: optim_pp{p:02d}_tp{t:02d}.pt has no param_names (saved "
                                   "by an older hydra_dist): it resumes only on its own TP and PP "
                                   f"sizes (tp={tp} pp={pp})")
            for i, n in enumerate(names):
                self.where.setdefault(n, (p, {}))[1][t] = i

    def state(self, name: str) -> dict:
        """{'step', 'exp_avg', 'exp_avg_sq'} of `name`, moments TP-merged, or {} when the saved
        optimizer never stepped it."""
        from hydra_dist.models.partition import merge_tp
        p, idx = self.where[name]
        per_tp = [self.files[(p, t)]["optimizer"]["state"].get(idx[t], {}) for t in sorted(idx)]
        if not per_tp[0]:
            return {}
        out = {"step": per_tp[0]["step"].clone()}
        for k in ("exp_avg", "exp_avg_sq"):
            out[k] = merge_tp(name, [s[k] for s in per_tp]).clone()
        return out

    def groups(self) -> Dict[str, dict]:
        """Saved optimizer-group hyperparameters (lr, initial_lr, ...) by group name."""
        out: Dict[str, dict] = {}
        for sd in self.files.values():
            for g in sd["optimizer"]["param_groups"]:
                out.setdefault(g["name"], {k: v for k, v in g.items() if k != "params"})
        return out

    def scheduler(self) -> dict:
        return next(iter(self.files.values()))["scheduler"]


def load_megatron_resharded(engine, folder: Path, tp: int, tp_rank: int) -> None:
    """Fill `engine` (a MegatronEngine built for this run's layout) from the checkpoint in
    `folder`, saved under other TP and/or PP sizes."""
    from hydra_dist.export.megatron_reader import MegatronCheckpoint
    from hydra_dist.models.partition import split_tp
    weights = MegatronCheckpoint(folder)
    old = OldOptimizerStates(folder, weights.tp, weights.pp)
    own = engine.model.flat_state_dict()
    masters = engine.master.named_masters() if engine.master is not None else {}
    names: List[str] = engine.optimizer_param_names()
    stored = set(weights.names())
    missing = sorted(n for n in own if n not in stored) + \
        sorted(n for n in names if n not in old.where)
    if missing:   # before anything is written into the engine
        raise RuntimeError(f"{folder}: no stored value for {len(missing)} tensors of this "
                           f"pipeline stage, e.g. {missing[:3]} (another model?)")
    with torch.no_grad():
        for n, t in own.items():
            full = split_tp(n, weights.load(n), tp, tp_rank)
            if tuple(full.shape) != tuple(t.shape):
                raise RuntimeError(f"{folder}: {n} is {tuple(full.shape)} for TP rank {tp_rank} "
                                   f"of {tp}, this model has {tuple(t.shape)}")
            if n in masters:
                masters[n].copy_(full)
            t.copy_(full)   # the bf16 weights: their masters rounded, as after a step
    sd = engine.optimizer.state_dict()
    state = {}
    for i, n in enumerate(names):
        st = old.state(n)
        if st:
            st["exp_avg"] = split_tp(n, st["exp_avg"], tp, tp_rank)
            st["exp_avg_sq"] = split_tp(n, st["exp_avg_sq"], tp, tp_rank)
            state[i] = st
    saved_groups = old.groups()
    for g in sd["param_groups"]:
        if g["name"] not in saved_groups:
            raise RuntimeError(f"{folder}: no saved optimizer group {g['name']!r}")
        g.update({k: v for k, v in saved_groups[g["name"]].items() if k != "name"})
    sd["state"] = state
    engine.optimizer.load_state_dict(sd)
    sched = engine.scheduler.state_dict()
    saved = old.scheduler()
    sched.update(last_epoch=saved["last_epoch"], _step_count=saved["_step_count"],
                 _last_lr=[g["lr"] for g in engine.optimizer.param_groups])
    engine.scheduler.load_state_dict(sched)
    step = int(next(iter(state.values()))["step"]) if state else 0
    log.info("resharded %s (tp=%d pp=%d) onto tp rank %d of %d: %d tensors, %d with Adam state "
             "(step %d), scheduler at step %d", folder, weights.tp, weights.pp, tp_rank, tp,
             len(own), len(state), step, saved["last_epoch"])
