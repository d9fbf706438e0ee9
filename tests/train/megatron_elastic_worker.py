"""torchrun worker for test_elastic_resume.py's megatron cases: build the megatron engine for
this world exactly as the trainer does, load the run's latest checkpoint through
CheckpointManager (the engine's own load on the saved layout, the by-name resharding on another
TP/PP size), then gather every trainable parameter's fp32 master and both Adam moments over TP
and PP and write them (rank 0) by name, with the lr per optimizer group, Adam's step and the
scheduler's step, to compare layouts bitwise.

  torchrun ... megatron_elastic_worker.py OUT.pt CONFIG [key=value ...]"""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from hydra_dist.checkpoint import CheckpointManager
from hydra_dist.config import load_config
from hydra_dist.distributed.init import init_distributed, shutdown
from hydra_dist.train.run_setup import resolve_batch
from hydra_dist.train.tasks.unified import UnifiedTask


def tp_whole(name: str, t: torch.Tensor, tp: int) -> torch.Tensor:
    if tp == 1:
        return t
    from megatron.core import parallel_state as ps

    from hydra_dist.models.partition import merge_tp
    parts = [torch.empty_like(t) for _ in range(tp)]
    dist.all_gather(parts, t.contiguous(), group=ps.get_tensor_model_parallel_group())
    return merge_tp(name, parts)


def main(out: str, args: list) -> None:
    import logging
    import os
    logging.basicConfig(level=logging.INFO)
    cfg = load_config(args[0], args[1:], world_size=int(os.environ["WORLD_SIZE"]))
    p = cfg.parallel
    layout = init_distributed(p.tp, p.pp, p.timeout_s, p.backend)
    try:
        resolve_batch(cfg, layout)
        engine = UnifiedTask(cfg).build_engine(layout)
        ckpt = CheckpointManager(Path(cfg.output_dir) / "checkpoints", 2, layout.rank)
        state = ckpt.load(engine, ckpt.latest())
        opt = engine.optimizer
        names = engine.optimizer_param_names()
        params = [q for g in opt.param_groups for q in g["params"]]
        mine = {}
        for name, prm in zip(names, params):
            st = opt.state[prm]
            mine[name] = [tp_whole(name, t.detach().float().clone(), p.tp)
                          for t in (prm, st["exp_avg"], st["exp_avg_sq"])]
        groups = {g["name"]: g["lr"] for g in opt.param_groups}
        steps = sorted({float(s["step"]) for s in opt.state.values()})
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, (mine, groups, steps, engine.scheduler.last_epoch))
        got = {"step": state["step"], "values": {}, "lr": {}, "adam_step": set(), "sched": set()}
        for values, lrs, st, sched in every:
            got["values"].update(values)
            got["lr"].update(lrs)
            got["adam_step"].update(st)
            got["sched"].add(sched)
        got["adam_step"], got["sched"] = sorted(got["adam_step"]), sorted(got["sched"])
        if layout.rank == 0:
            torch.save(got, out)
    finally:
        shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
