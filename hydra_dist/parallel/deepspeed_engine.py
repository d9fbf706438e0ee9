"""DeepSpeed engine: ZeRO 0-3 over the data-parallel group, megatron-core TP layers inside.

DeepSpeed learns the layout through `mpu`; megatron's parallel_state lacks the
get_model_parallel_* names DeepSpeed calls, hence the adapter. The model is built first and
partitioned by deepspeed.initialize (not zero.Init, which ignores mpu and breaks megatron's
initialisation; docs/design.md).
"""
from __future__ import annotations

import math
import os

import torch
from megatron.core import parallel_state as ps

from hydra_dist.config.schema import RunConfig

from .ds_tuning import zero_section


class MegatronMpu:
    """DeepSpeed's mpu interface answered by megatron-core parallel_state."""
    get_data_parallel_group = staticmethod(ps.get_data_parallel_group)
    get_data_parallel_rank = staticmethod(ps.get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(ps.get_data_parallel_world_size)
    get_model_parallel_group = staticmethod(ps.get_model_parallel_group)
    get_tensor_model_parallel_group = staticmethod(ps.get_tensor_model_parallel_group)
    get_tensor_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_world_size = staticmethod(ps.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_src_rank = staticmethod(ps.get_tensor_model_parallel_src_rank)
    get_pipeline_model_parallel_rank = staticmethod(ps.get_pipeline_model_parallel_rank)
    get_pipeline_model_parallel_world_size = staticmethod(ps.get_pipeline_model_parallel_world_size)

    @staticmethod
    def get_model_parallel_rank():
        # tp x pp coordinate, which is what DeepSpeed uses to name checkpoint shards
        return ps.get_tensor_model_parallel_rank() + ps.get_tensor_model_parallel_world_size() * \
            ps.get_pipeline_model_parallel_rank()

    @staticmethod
    def get_model_parallel_world_size():
        return ps.get_tensor_model_parallel_world_size() * ps.get_pipeline_model_parallel_world_size()


def ds_config(cfg: RunConfig, cuda: bool | None = None) -> dict:
    p = cfg.parallel
    # bucket sizes, overlap, prefetch and persistence: derived from model and layout (ds_tuning)
    zero = zero_section(cfg, torch.cuda.is_available() if cuda is None else cuda)
    return {
        "train_micro_batch_size_per_gpu": p.micro_batch_size,
        "gradient_accumulation_steps": p.grad_accum,
        "gradient_clipping": cfg.train.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": p.precision == "bf16"},
        # bf16 compute, fp32 everywhere precision is lost by summing: gradients are reduced over
        # DP in fp32 and accumulated over micro-batches in fp32 (ZeRO keeps fp32 master weights
        # and Adam state itself); with fp32 training both are fp32 anyway
        "communication_data_type": "fp32",
        "data_types": {"grad_accum_dtype": "fp32"},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }


def param_groups(model: torch.nn.Module, cfg: RunConfig):
    """One group per (model part, decay/no-decay) holding trainable parameters only: frozen parts
    get no optimizer state; norms and biases get no weight decay; each part may have its own LR."""
    o = cfg.train.optim
    groups = []
    parts = model.part_modules() if hasattr(model, "part_modules") else {"all": [model]}
    for part, mods in parts.items():
        lr = o.lr_per_part.get(part, o.lr)
        decay, no_decay = [], []
        for mod in mods:
            for name, p in mod.named_parameters():
                if p.requires_grad:
                    (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
        for params, wd, kind in ((decay, o.weight_decay, "decay"), (no_decay, 0.0, "no_decay")):
            if params:
                groups.append({"params": params, "weight_decay": wd, "lr": lr, "name": f"{part}.{kind}"})
    return groups


def lr_lambda(cfg: RunConfig):
    o, total = cfg.train.optim, cfg.train.steps

    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / max(o.warmup_steps, 1)
        frac = min(1.0, (step - o.warmup_steps) / max(total - o.warmup_steps, 1))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    return f


def build_deepspeed(model: torch.nn.Module, cfg: RunConfig):
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    import deepspeed
    if not torch.cuda.is_available():
        # shm_comm is only for inference all-reduce; building it costs ~25 s per fresh host.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    o = cfg.train.optim
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                           config=ds_config(cfg), mpu=MegatronMpu(),
                                           dist_init_required=False)
    return engine
