"""megatron-core engine: DP x TP x PP with megatron's pipeline schedules.

Each rank holds only its pipeline chunks, built by the task (train/tasks/: models/pipeline_stage.py
for the unified model, models/tokenizer/pipeline_stage.py for HYDRA-TOK): one chunk for 1F1B,
`parallel.virtual_pp` chunks for the interleaved schedule. The engine knows no task: a chunk's
forward takes (batch, **spec.stage_kwargs) and the last one returns the loss terms. A step runs
`get_forward_backward_func()` (no-pipelining / 1F1B / interleaved) over the step's micro-batches,
then all-reduces gradients over the DP group, clips by the global norm over every stage and
TP shard, and steps a torch AdamW per stage.

Precision: parallel.precision=bf16 computes in bf16 (chunks cast, pipeline p2p in bf16) with
fp32 master weights, fp32 gradient accumulation and fp32 Adam state (MasterParams); fp32 runs
the chunks as they are (TF32 matmuls on GPU, distributed/init.py).

Optimizer: megatron-core's DistributedDataParallel and DistributedOptimizer allocate their
grad buffers on torch.cuda.current_device() and use CUDA streams/events for the overlapped
reduce, so they cannot run on CPU/gloo where this is tested; the engine keeps its own (torch
AdamW on fp32 masters, one flat DP all-reduce after the schedule, global-norm clipping) on CPU
and, until a GPU check proves megatron's, on GPU too (logged at start-up).

Loss normalisation (unified task): ntp_den / fm_den are global counts / (dp * grad_accum);
megatron divides each micro-batch loss by num_microbatches and we average gradients over DP,
so the step's gradient is that of the exact global per-token / per-image mean (as DeepSpeed's).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from hydra_dist.config.schema import RunConfig
from hydra_dist.distributed.init import to_comm
from hydra_dist.distributed.phase import Phase

from .deepspeed_engine import lr_lambda, param_groups
from .engine import StepResult, StepSpec

log = logging.getLogger("hydra_dist")


def compute_dtype(cfg: RunConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.parallel.precision == "bf16" else torch.float32


def engine_device(layout) -> torch.device:
    return torch.device("cuda", layout.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def schedule_config(cfg: RunConfig, shape):
    """shape: the stack whose tokens travel between stages (num_layers, hidden_size, num_heads;
    p2p buffers are (seq, micro_batch, hidden_size)). A TransformerConfig only because the
    schedules read some of its fields; our layers are built from models/layers.py's config."""
    from megatron.core.transformer.transformer_config import TransformerConfig
    p = cfg.parallel
    return TransformerConfig(
        num_layers=shape.num_layers, hidden_size=shape.hidden_size, num_attention_heads=shape.num_heads,
        tensor_model_parallel_size=p.tp, pipeline_model_parallel_size=p.pp,
        virtual_pipeline_model_parallel_size=p.virtual_pp if p.virtual_pp > 1 else None,
        pipeline_dtype=compute_dtype(cfg), params_dtype=compute_dtype(cfg), use_cpu_initialization=True,
        # unbatched p2p: batch_isend_irecv + cuda.synchronize buys nothing on gloo
        batch_p2p_comm=False, overlap_p2p_comm=False)


class _Chunks(torch.nn.Module):
    """This rank's chunks as one module: named_parameters() gives HydraModel's names."""

    def __init__(self, chunks):
        super().__init__()
        self.chunks = torch.nn.ModuleList(chunks)

    def part_modules(self) -> dict:
        parts: dict = {}
        for c in self.chunks:
            for k, mods in c.part_modules().items():
                parts.setdefault(k, []).extend(mods)
        return parts

    def flat_state_dict(self) -> dict:
        out = {}
        for c in self.chunks:  # tensors only (megatron layers add `_extra_state: None` entries)
            out.update({k: v for k, v in c.state_dict().items() if isinstance(v, torch.Tensor)})
        return out


class MasterParams:
    """bf16 compute with fp32 master weights and fp32 gradients, as megatron's
    Float16OptimizerWithFloat16Params keeps them (whose CUDA-only code cannot run on CPU; this
    is its CPU twin): each trainable bf16 parameter has an fp32 master the optimizer steps and
    an fp32 main_grad that every micro-batch's bf16 gradient is added into as soon as it is
    accumulated (so summing micro-batches and DP ranks happens in fp32); after the step the
    bf16 weights are the masters rounded."""

    def __init__(self, model, params, groups):
        self.model, self.params = model, params
        self.masters = [torch.nn.Parameter(p.detach().float().clone()) for p in params]
        for p in params:
            p.main_grad = torch.zeros_like(p, dtype=torch.float32)
            p.register_post_accumulate_grad_hook(self._accumulate)
        by_id = {id(p): m for p, m in zip(params, self.masters)}
        for g in groups:  # the optimizer steps the masters, group by group as before
            g["params"] = [by_id[id(p)] for p in g["params"]]

    @staticmethod
    def _accumulate(p) -> None:
        p.main_grad.add_(p.grad.float())
        p.grad = None

    def zero_grads(self) -> None:
        for p in self.params:
            p.main_grad.zero_()

    def main_grads(self) -> list:
        return [p.main_grad for p in self.params]

    def hand_grads(self) -> None:
        for p, m in zip(self.params, self.masters):
            m.grad = p.main_grad

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for p, m in zip(self.params, self.masters):
            p.copy_(m)

    def named_masters(self) -> dict:
        """{state-dict name: fp32 master} for this rank's trainable parameters."""
        by_id = {id(p): m for p, m in zip(self.params, self.masters)}
        return {n: by_id[id(p)] for c in self.model.chunks for n, p in c.named_parameters()
                if id(p) in by_id}


class MegatronEngine:
    checkpoint_engine = None  # CheckpointManager asks DeepSpeed engines for theirs
    kind = "megatron"         # files per (pp, tp); DP replicas hold the same state

    def __init__(self, cfg: RunConfig, layout, chunks, device):
        self.cfg, self.layout, self.device = cfg, layout, device
        self.model = _Chunks(chunks)
        o = cfg.train.optim
        groups = param_groups(self.model, cfg)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.master = MasterParams(self.model, self.params, groups) \
            if cfg.parallel.precision == "bf16" else None
        self.optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.grad_norm = 0.0

    @property
    def module(self):
        return self.model.chunks[0] if len(self.model.chunks) == 1 else self.model

    @property
    def state_engine(self):
        """What CheckpointManager saves and loads: this engine itself (save/load_checkpoint)."""
        return self

    # --- one step -----------------------------------------------------------------------
    def train_step(self, batches, spec: StepSpec) -> StepResult:
        """Forward/backward over the micro-batches (shaped by the task: every one spec.seq_length
        rows of micro_batch_size) and the optimizer step; the result is valid on every rank."""
        from megatron.core.pipeline_parallel import get_forward_backward_func
        p = self.cfg.parallel
        keys, nan_from_micro = spec.keys, spec.nan_from_micro
        for prm in self.params:
            prm.grad = None
        if self.master is not None:
            self.master.zero_grads()
        counter = {"micro": 0}

        def loss_func(out):
            loss = out["loss"]
            if nan_from_micro is not None and counter["micro"] >= nan_from_micro:
                loss = loss * float("nan")  # fault-injection tests only
            counter["micro"] += 1
            return loss, {"loss": loss.detach().clone(), **{k: out[k] for k in keys[1:]}}

        def forward_step(data_iterator, model):
            return model(next(data_iterator), **spec.stage_kwargs), loss_func

        Phase.set("pipeline schedule (forward/backward of the micro-batches)")
        fb = get_forward_backward_func(pp_size=p.pp, vp_size=p.virtual_pp if p.virtual_pp > 1 else None)
        chunks = list(self.model.chunks)
        stored = fb(forward_step_func=forward_step,
                    data_iterator=[iter(batches) for _ in chunks] if len(chunks) > 1 else iter(batches),
                    model=chunks if len(chunks) > 1 else chunks[0], num_microbatches=len(batches),
                    seq_length=spec.seq_length, micro_batch_size=p.micro_batch_size,
                    forward_only=False)
        acc = torch.zeros(len(keys), dtype=torch.float64, device=self.device)
        for d in stored or []:
            acc += torch.stack([d[k].reshape(()).double() for k in keys])
        acc = to_comm(acc)
        Phase.set("all_reduce of logged losses")
        if p.pp > 1:  # the last stage holds the losses: give them to every stage
            dist.all_reduce(acc, group=ps.get_pipeline_model_parallel_group())
        dist.all_reduce(acc, group=ps.get_data_parallel_group())
        acc = acc.cpu()
        if not torch.isfinite(acc).all():  # identical on every rank: all skip together
            for prm in self.params:
                prm.grad = None
            if self.master is not None:
                self.master.zero_grads()
            return StepResult(torch.full((len(keys),), float("nan"), dtype=torch.float64), True)
        Phase.set("DP all-reduce of gradients and optimizer step")
        grads = self._grads()
        self._reduce_grads(grads)
        self.grad_norm = self._clip(grads, self.cfg.train.optim.grad_clip)
        if self.master is not None:
            self.master.hand_grads()
        self.optimizer.step()
        if self.master is not None:
            self.master.copy_to_model()
        self.scheduler.step()
        return StepResult(acc, False)

    def _grads(self) -> list:
        """The step's gradient of each trainable parameter: its fp32 main_grad under bf16, else
        .grad (zeros where a parameter got none: the same buffer layout on every DP rank)."""
        if self.master is not None:
            return self.master.main_grads()
        for prm in self.params:
            if prm.grad is None:
                prm.grad = torch.zeros_like(prm)
        return [prm.grad for prm in self.params]

    def _reduce_grads(self, grads) -> None:
        """Average gradients over DP (one flat buffer: one collective per step)."""
        dp = ps.get_data_parallel_world_size()
        if dp == 1 or not grads:
            return
        flat = to_comm(torch._utils._flatten_dense_tensors(grads))
        dist.all_reduce(flat, group=ps.get_data_parallel_group())
        flat /= dp
        for g, new in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(new)

    def _clip(self, grads, max_norm: float) -> float:
        """Global L2 norm over every stage and TP shard (replicated tensors counted once), then
        torch.nn.utils.clip_grad_norm_'s scaling."""
        tp_rank = ps.get_tensor_model_parallel_rank()
        sq = torch.zeros(1, dtype=torch.float32, device=self.device)
        for prm, g in zip(self.params, grads):
            if getattr(prm, "tensor_model_parallel", False) or tp_rank == 0:
                sq += g.float().pow(2).sum()
        sq = to_comm(sq)
        dist.all_reduce(sq, group=ps.get_model_parallel_group())
        norm = sq.sqrt().item()
        if max_norm and max_norm > 0:
            coef = min(max_norm / (norm + 1e-6), 1.0)
            for g in grads:
                g.mul_(coef)
        return norm

    def get_global_grad_norm(self) -> float:
        return self.grad_norm

    def optimizer_param_names(self) -> list:
        """The state-dict name of every parameter the optimizer steps, in its order (the order
        of torch's optimizer state indices): what makes the saved Adam state layout-free."""
        ids = {id(p): n for c in self.model.chunks for n, p in c.named_parameters()}
        if self.master is not None:
            ids.update({id(m): n for n, m in self.master.named_masters().items()})
        return [ids[id(p)] for g in self.optimizer.param_groups for p in g["params"]]

    # --- checkpoints (the DeepSpeed-engine interface CheckpointManager calls) -------------
    def state_dict(self) -> dict:
        """Under bf16 the weights saved are the fp32 master values (the bf16 copy is their
        rounding), so a resume and an export see full precision."""
        model = self.model.flat_state_dict()
        if self.master is not None:
            model.update(self.master.named_masters())
        return {"model": model, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        own = self.model.flat_state_dict()
        missing = sorted(set(own) - set(sd["model"]))
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} tensors of this stage: {missing[:5]}")
        with torch.no_grad():
            for k, t in own.items():
                t.copy_(sd["model"][k])
            if self.master is not None:
                for k, t in self.master.named_masters().items():
                    t.copy_(sd["model"][k])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.scheduler.load_state_dict(sd["scheduler"])

    def _files(self, folder: Path):
        pp, tp = ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()
        return (folder / f"model_pp{pp:02d}_tp{tp:02d}.safetensors",
                folder / f"optim_pp{pp:02d}_tp{tp:02d}.pt")

    def save_checkpoint(self, root: str, tag: str, save_latest: bool = False) -> None:
        """Weights as safetensors per (pp, tp) rank, optimizer state beside them; DP replicas
        are identical, so DP rank 0 writes."""
        from safetensors.torch import save_file
        folder = Path(root) / tag
        folder.mkdir(parents=True, exist_ok=True)
        if ps.get_data_parallel_rank() == 0:
            sd = self.state_dict()
            model_f, optim_f = self._files(folder)
            save_file({k: v.detach().contiguous() for k, v in sd["model"].items()}, str(model_f),
                      metadata={"layout": json.dumps({"tp": self.layout.tp, "pp": self.layout.pp,
                                                      "virtual_pp": self.cfg.parallel.virtual_pp})})
            # param_names: another TP/PP layout finds each parameter's Adam state by name
            # (checkpoint/megatron_reshard.py)
            torch.save({"optimizer": sd["optimizer"], "scheduler": sd["scheduler"],
                        "param_names": self.optimizer_param_names()}, optim_f)

    def load_checkpoint(self, root: str, tag: str):
        from safetensors.torch import load_file
        folder = Path(root) / tag
        model_f, optim_f = self._files(folder)
        if not model_f.is_file():
            return None, None
        rest = torch.load(optim_f, map_location="cpu", weights_only=True)
        rest.pop("param_names", None)
        self.load_state_dict({"model": load_file(str(model_f)), **rest})
        return str(folder), {}


def build_megatron(cfg: RunConfig, layout, chunks, device) -> MegatronEngine:
    """The engine over this rank's chunks (built by the task, on CPU, seeded as the single-process
    model): moved to the device and compute dtype."""
    p = cfg.parallel
    for c in chunks:
        c.checkpointing = p.activation_checkpointing
        c.to(device=device, dtype=compute_dtype(cfg))
    engine = MegatronEngine(cfg, layout, chunks, device)
    n_all = sum(x.numel() for x in engine.model.parameters())
    log.info("megatron engine: pp rank %d holds chunks %s (%.2fM parameters); %s schedule; "
             "optimizer: torch AdamW per stage, DP all-reduce, global-norm clipping "
             "(megatron DDP / DistributedOptimizer not used)", layout.pp_rank,
             [c.chunk for c in chunks], n_all / 1e6,
             "no-pipelining" if p.pp == 1 else ("interleaved" if p.virtual_pp > 1 else "1F1B"))
    return engine
