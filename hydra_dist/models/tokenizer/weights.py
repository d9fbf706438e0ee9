"""Layout-free tokenizer weights: full (un-sharded) tensors in, TP shards out, and back.

A TP-sharded parameter's full tensor is the concatenation of the TP ranks' shards along the dim
models/partition.py names for it (the same rule export, import and resharding use). Files hold full tensors, so a
tokenizer trained at one TP size loads at any other (tokenizer.init_from, hydra-eval-recon).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from hydra_dist.distributed.init import to_comm

from ..partition import partition_dim


def tp_dim(name: str):
    """The dim `name` is sharded along on this run's TP group, or None (replicated / TP = 1)."""
    return partition_dim(name) if ps.get_tensor_model_parallel_world_size() > 1 else None


def shard(full, name: str):
    """This TP rank's slice of the full tensor of parameter `name`."""
    dim = tp_dim(name)
    if dim is None:
        return full
    tp, r = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    return full.chunk(tp, dim=dim)[r]


def gather(p, name: str) -> torch.Tensor:
    t, dim = p.detach(), tp_dim(name)
    if dim is None:
        return t.clone()
    group = ps.get_tensor_model_parallel_group()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, to_comm(t.contiguous(), group), group=group)
    return torch.cat(parts, dim=dim)


@contextlib.contextmanager
def zero3_gathered(module, zero_stage: int):
    """Whole parameters for the duration (ZeRO-3 partitions them; a collective on all ranks)."""
    if zero_stage == 3:
        import deepspeed
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            yield
    else:
        yield


def full_state_dict(module) -> dict:
    """Full tensors of every parameter (collective over TP: call on all TP ranks)."""
    return {n: gather(p, n).cpu() for n, p in module.named_parameters()}


def load_full(module, full: dict, *, strict: bool = True, where: str = "") -> list[str]:
    """Copy full tensors into (possibly TP-sharded) parameters; -> names loaded."""
    params = dict(module.named_parameters())
    if strict:
        missing, unknown = sorted(set(params) - set(full)), sorted(set(full) - set(params))
        if missing or unknown:
            raise KeyError(f"{where}: missing {missing[:8]}, unexpected {unknown[:8]}")
    done = []
    for name, t in full.items():
        if name not in params:
            continue
        p = params[name]
        t = shard(t, name)
        if t.shape != p.shape:
            raise ValueError(f"{where}: {name} has shape {tuple(t.shape)}, the model "
                             f"{tuple(p.shape)} (check model.vit / tokenizer.decoder sizes)")
        with torch.no_grad():
            p.copy_(t.to(p.dtype))
        done.append(name)
    return done


def save_tokenizer(module, path: Path, zero_stage: int, meta: dict) -> None:
    """All ranks call; DP rank 0 / TP rank 0 writes {"state_dict": full tensors, "meta"}."""
    with zero3_gathered(module, zero_stage):
        sd = full_state_dict(module)
    if dist.get_rank() == 0:
        tmp = Path(str(path) + ".tmp")
        torch.save({"state_dict": sd, "meta": meta}, tmp)
        tmp.replace(path)


def load_tokenizer(module, path: str, strict: bool = True) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    load_full(module, obj["state_dict"], strict=strict, where=str(path))
    return obj.get("meta", {})


def load_tokenizer_run(tok_run: str):
    """HYDRA-TOK (for its pixel decoder) from a tokenizer run folder: config.yaml + tokenizer.pt."""
    from hydra_dist.config import load_config
    from hydra_dist.models.tokenizer.model import HydraTok
    run = Path(tok_run)
    cfg = load_config(run / "config.yaml")
    model = HydraTok(cfg)
    load_tokenizer(model, str(run / "tokenizer.pt"), strict=False)
    return model.eval()

