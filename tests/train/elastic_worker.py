"""torchrun worker for test_elastic_resume.py: build the engine (DeepSpeed or megatron) for this
world exactly as the trainer does, load the run's latest checkpoint through CheckpointManager
(the engine's own load on the saved layout, the resharding load on another one), then gather
every trainable parameter's fp32 master and both Adam moments (DeepSpeed: its safe_get_full_*
API; megatron: by name over TP and PP) and write them (rank 0) with the optimizer's lr per
group, Adam's step and the schedule's step, to compare layouts bitwise.

  torchrun ... elastic_worker.py OUT.pt CONFIG [key=value ...]"""
import sys
from pathlib import Path

import torch

from hydra_dist.checkpoint import CheckpointManager
from hydra_dist.checkpoint.reshard import link_optimizer_state
from hydra_dist.config import load_config
from hydra_dist.distributed.init import init_distributed, shutdown
from hydra_dist.train.run_setup import resolve_batch
from hydra_dist.train.tasks.unified import UnifiedTask


def whole(name: str, t: torch.Tensor, tp: int) -> torch.Tensor:
    """The TP-merged tensor (every TP rank's slice gathered over the TP group)."""
    if tp == 1:
        return t
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from hydra_dist.models.partition import merge_tp
    parts = [torch.empty_like(t) for _ in range(tp)]
    dist.all_gather(parts, t.contiguous(), group=ps.get_tensor_model_parallel_group())
    return merge_tp(name, parts)


def deepspeed_state(engine, p) -> dict:
    """Every trainable parameter's fp32 master and moments (DeepSpeed's safe_get_full_* API;
    ZeRO-0 fp32: the torch optimizer steps the parameter itself), TP-merged."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
    if p.zero_stage > 0:
        link_optimizer_state(engine.optimizer)   # ZeRO-1/2 before a step: see reshard.py
    got = {"values": {}}
    for name, prm in engine.module.named_parameters():
        if not prm.requires_grad:
            continue
        if p.zero_stage == 0:
            st = engine.optimizer.state[prm]
            local = [prm.detach(), st["exp_avg"], st["exp_avg_sq"]]
        else:
            local = [safe_get_full_fp32_param(prm), safe_get_full_optimizer_state(prm, "exp_avg"),
                     safe_get_full_optimizer_state(prm, "exp_avg_sq")]
        got["values"][name] = [whole(name, t.cpu().clone(), p.tp) for t in local]
    opt = engine.optimizer.optimizer if p.zero_stage > 0 else engine.optimizer
    got["lr"] = [g["lr"] for g in opt.param_groups]
    got["adam_step"] = sorted({float(s["step"]) for s in opt.state.values() if "step" in s})
    got["sched"] = engine.lr_scheduler.state_dict()["last_epoch"]
    return got


def megatron_state(engine, p) -> dict:
    """The same for the megatron engine, by name: masters (bf16) or parameters (fp32) and their
    moments TP-merged on each stage, the stages' dicts gathered (lr per group name)."""
    import torch.distributed as dist
    opt = engine.optimizer
    params = [q for g in opt.param_groups for q in g["params"]]
    mine = {n: [whole(n, t.detach().float().clone(), p.tp)
                for t in (q, opt.state[q]["exp_avg"], opt.state[q]["exp_avg_sq"])]
            for n, q in zip(engine.optimizer_param_names(), params)}
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, (mine, {g["name"]: g["lr"] for g in opt.param_groups},
                                   [float(s["step"]) for s in opt.state.values()],
                                   engine.scheduler.last_epoch))
    got = {"values": {}, "lr": {}, "adam_step": set(), "sched": set()}
    for values, lrs, steps, sched in every:
        got["values"].update(values)
        got["lr"].update(lrs)
        got["adam_step"].update(steps)
        got["sched"].add(sched)
    got["adam_step"], got["sched"] = sorted(got["adam_step"]), sorted(got["sched"])
    return got


def main(out: str, args: list) -> None:
    import logging
    import os
    logging.basicConfig(level=logging.INFO)
    cfg = load_config(args[0], args[1:], world_size=int(os.environ["WORLD_SIZE"]))
    p = cfg.parallel
    layout = init_distributed(p.tp, p.pp, p.timeout_s, p.backend)
    try:
        resolve_batch(cfg, layout)
        engine = UnifiedTask(cfg).build_engine(layout).state_engine   # as the trainer builds it
        ckpt = CheckpointManager(Path(cfg.output_dir) / "checkpoints", 2, layout.rank)
        state = ckpt.load(engine, ckpt.latest())
        got = megatron_state(engine, p) if p.engine == "megatron" else deepspeed_state(engine, p)
        got["step"] = state["step"]
        if layout.rank == 0:
            torch.save(got, out)
    finally:
        shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
