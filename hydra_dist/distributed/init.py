"""Process groups from torchrun or SLURM env, with timeouts, and megatron parallel_state."""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Layout:
    rank: int
    world: int
    local_rank: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int

    @property
    def holds_loss(self) -> bool:
        """Metrics are logged by the last pipeline stage, tp 0, dp 0 (docs/design.md)."""
        return self.pp_rank == self.pp - 1 and self.tp_rank == 0 and self.dp_rank == 0


def env_world() -> tuple[int, int, int]:
    """(rank, world, local_rank) from torchrun, else SLURM, else a single process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                int(os.environ.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ and "MASTER_ADDR" in os.environ:
        return (int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]),
                int(os.environ.get("SLURM_LOCALID", 0)))
    return 0, 1, 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(tp: int, pp: int, timeout_s: int, backend: str = "auto") -> Layout:
    rank, world, local_rank = env_world()
    if world == 1:  # a plain single process still gets a (size-1) group: one code path
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank))
    os.environ.setdefault("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", str(world)))
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    # fp32 matmuls and convolutions on tensor cores (TF32): what the planner's fp32 peak assumes
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    from hydra_dist.distributed import megatron_compat
    megatron_compat.apply_if_needed()
    from megatron.core import parallel_state as ps
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                     distributed_timeout_minutes=timeout_s / 60)  # megatron's groups: same timeout
    return Layout(rank=rank, world=world, local_rank=local_rank, tp=tp, pp=pp,
                  dp=ps.get_data_parallel_world_size(),
                  tp_rank=ps.get_tensor_model_parallel_rank(),
                  pp_rank=ps.get_pipeline_model_parallel_rank(),
                  dp_rank=ps.get_data_parallel_rank())


# --- the collective-device rule ---------------------------------------------------------------
# On a cluster the process groups are NCCL, which takes CUDA tensors only; on CPU they are gloo.
# Every collective this project issues itself (loss denominators, the non-finite and preemption
# flags, logged metrics, gradient buffers of the megatron engine and the GAN discriminator)
# hands over tensors placed by to_comm: on the current CUDA device for an NCCL group, on the CPU
# for gloo. (A mixed `cpu:gloo,cuda:nccl` default group would also serve CPU tensors, but
# megatron-core and DeepSpeed create their own groups NCCL-only, so the rule is the one that
# holds for every group.) tests/distributed/test_comm_rule.py checks every collective of real
# runs of both tasks on both engines against it.
COMM_MARK = "hydra_comm_placed"


def comm_device(group=None) -> torch.device:
    """The device whose tensors a collective on `group` takes: CUDA (the current device) for
    NCCL, CPU for gloo."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def to_comm(t: torch.Tensor, group=None) -> torch.Tensor:
    """t on the device `group`'s backend serves (a no-op when it is there already), marked as
    placed by the rule."""
    out = t.to(comm_device(group))
    setattr(out, COMM_MARK, True)
    return out


def comm_tensor(values, dtype=torch.float64, group=None) -> torch.Tensor:
    """A small tensor of Python numbers for a collective on `group`."""
    return to_comm(torch.tensor(values, dtype=dtype), group)


def shutdown() -> None:
    from megatron.core import parallel_state as ps
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
