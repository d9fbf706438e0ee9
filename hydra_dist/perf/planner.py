"""Layout planner for H100/H200 clusters: per-GPU memory and predicted step time / MFU of a
(tp, pp, zero stage, activation checkpointing) layout, and a search for the best one that fits.

Time model (per micro-batch, per GPU), all constants in `Hardware` and printed by hydra-plan:
  compute   = model FLOPs / (tp * pp) / (peak * matmul_efficiency), + the recomputed forward of
              checkpointed stacks
  tp comm   = 4 all-reduces of the layer's activations per LLM / ViT layer (2 fwd, 2 bwd; +2
              when recomputing), ring cost 2 (tp-1)/tp * bytes / NVLink bandwidth; not overlapped
  dp comm   = ZeRO-3: all-gather of the parameters in forward and backward + reduce-scatter of
              gradients, every micro-batch; ZeRO 0-2: gradient all-reduce (or reduce-scatter +
              all-gather of the updated shards: the same bytes) once per step; NVLink inside a node, InfiniBand across nodes;
              overlapped with compute up to `overlap` of the compute time
  pipeline  = bubble (pp - 1) / grad_accum (1F1B)
The global batch (samples per optimizer step) is held fixed across layouts: train.global_batch,
or micro x grad_accum x dp of the configured layout when it is 0; each layout's grad_accum is
global / (micro x dp), and a layout where that does not divide is marked not runnable. The DP
overlap applies only where the DeepSpeed config overlaps (parallel/ds_tuning.py: overlap_comm
with CUDA, ZeRO 1-3; ZeRO-0 all-reduces after the backward, so nothing hides).
Memory per GPU = model state (memory.model_state_bytes) + activations (memory.activation_bytes)
  + ZeRO-3 gather buffers (two of the largest layer + the embedding) + a fixed framework reserve.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from hydra_dist.config.schema import derive_grad_accum
from hydra_dist.parallel.ds_tuning import zero_tuning

from .flops import unified_flops_of_shape
from .memory import Shape, activation_bytes, model_state_bytes, param_counts, shape_of_config

GB = 1e9


@dataclass
class Hardware:
    name: str
    memory_gb: float
    peak_tflops: float            # dense bf16
    nvlink_gbps: float = 300.0    # effective all-reduce bus bandwidth inside a node (GB/s)
    ib_gbps: float = 40.0         # effective per-GPU bandwidth across nodes (GB/s; 400 Gb/s NICs)
    matmul_efficiency: float = 0.55
    overlap: float = 0.7
    reserve_gb: float = 4.0       # CUDA context, NCCL buffers, allocator fragmentation


GPUS = {"h100": Hardware("H100 SXM 80GB", 80.0, 989.0),
        "h200": Hardware("H200 141GB", 141.0, 989.0)}


@dataclass
class Plan:
    tp: int
    pp: int
    dp: int
    zero: int
    ckpt: bool
    mem: dict
    step_s: float
    mfu: float
    tokens_per_s: float
    runnable: str = ""        # why this layout cannot run on the configured engine ("" = it can)
    grad_accum: int = 1
    global_batch: int = 0

    @property
    def total_gb(self) -> float:
        return sum(self.mem.values()) / GB


def _with(cfg, tp, pp, zero, ckpt):
    c = copy.deepcopy(cfg)
    c.parallel.tp, c.parallel.pp, c.parallel.zero_stage = tp, pp, zero
    c.parallel.activation_checkpointing, c.parallel.precision = ckpt, "bf16"
    return c


def global_batch_of(cfg, world: int) -> int:
    """Samples per optimizer step, held fixed by the planner across layouts."""
    p = cfg.parallel
    return cfg.train.global_batch or p.micro_batch_size * p.grad_accum * max(world // (p.tp * p.pp), 1)


def evaluate(cfg, hw: Hardware, nodes: int, gpn: int, tp: int, pp: int, zero: int, ckpt: bool,
             shape: Shape | None = None) -> Plan:
    world = nodes * gpn
    dp = world // (tp * pp)
    c = _with(cfg, tp, pp, zero, ckpt)
    shape = shape or shape_of_config(c)
    gb = global_batch_of(cfg, world)
    ga, bad_batch = derive_grad_accum(gb, c.parallel.micro_batch_size, dp)
    ga = ga or max(1, -(-gb // (c.parallel.micro_batch_size * dp)))
    c.parallel.grad_accum = ga
    m = c.model
    # memory (pipeline: worst stage = vision + 1/pp of the LLM; activations as pp = 1 under 1F1B)
    st = model_state_bytes(c, dp, tp=tp, precision="bf16")
    if pp > 1:
        counts = param_counts(m)
        llm_share = counts["llm"].per_rank(tp) / sum(x.per_rank(tp) for x in counts.values())
        st = {k: v * (1 - llm_share * (1 - 1 / pp)) for k, v in st.items()}
    act = activation_bytes(c, shape, precision="bf16", attention="flash")
    counts = param_counts(m)
    H, V = m.llm.hidden_size, m.llm.vocab_size
    layer_params = counts["llm"].sharded / max(m.llm.num_layers, 1) / tp
    buffers = (2 * layer_params + V * H / tp) * 2 if zero == 3 else 0.0
    mem = {"params": st["params"], "grads": st["grads"], "optimizer": st["optimizer"],
           "activations": sum(v for k, v in act.items() if k != "recompute_peak"),
           "recompute_peak": act["recompute_peak"], "zero3_buffers": buffers,
           "reserve": hw.reserve_gb * GB}
    # time per micro-batch
    rep = unified_flops_of_shape(c, shape.images, shape.rows, shape.seq, shape.pairs, shape.labelled)
    flops = rep.total
    recompute = sum(rep.parts[p].fwd for p in ("gen_vit", "sem_vit", "llm") if rep.parts[p].bwd > 0) if ckpt else 0
    peak = hw.peak_tflops * 1e12
    compute = (flops + recompute) / (tp * pp) / (peak * hw.matmul_efficiency)
    tp_comm = 0.0
    if tp > 1:
        per_layer = 2 * shape.tokens * H + 2 * shape.images * (m.vit.image_size // m.vit.patch_size) ** 2 * m.vit.hidden_size
        n_ar = 4 + (2 if ckpt else 0)
        tp_comm = (m.llm.num_layers / pp) * n_ar * 2 * (tp - 1) / tp * (2 * shape.tokens * H) / (hw.nvlink_gbps * GB)
        tp_comm += (m.vit.gen_layers + m.vit.sem_layers) * n_ar * 2 * (tp - 1) / tp * \
            (per_layer - 2 * shape.tokens * H) / (hw.nvlink_gbps * GB) / pp
    bw = (hw.ib_gbps if world > gpn else hw.nvlink_gbps) * GB
    frac = (dp - 1) / dp if dp > 1 else 0.0
    all_p = sum(x.per_rank(tp) for x in counts.values()) / pp * 2
    train_p = sum(x.per_rank(tp) for k, x in counts.items() if k not in m.freeze) / pp * 2
    if zero == 3:
        dp_micro = (all_p + train_p + train_p) * frac / bw
        dp_step = 0.0
    else:
        dp_micro = 0.0
        # all-reduce (ZeRO-0) or reduce-scatter + all-gather of the updated shards (1, 2): same bytes
        dp_step = 2 * train_p * frac / bw
    # what the DeepSpeed config lets hide; the megatron engine (pp > 1) reduces after the
    # schedule in one flat all-reduce, so nothing of its DP reduce is hidden
    overlap = hw.overlap if pp == 1 and zero > 0 and zero_tuning(c, cuda=True).overlap_comm else 0.0
    micro = compute + tp_comm + max(0.0, dp_micro - overlap * compute)
    step = ga * micro * (1 + (pp - 1) / ga) + max(0.0, dp_step - overlap * compute)
    mfu = ga * flops / (tp * pp) / (step * peak)
    tokens = dp * ga * shape.tokens / step
    runnable = bad_batch
    if pp > 1 and not runnable:   # the megatron engine: pp x tp x dp, its own DP all-reduce (no ZeRO)
        if zero != 0:
            runnable = "pp > 1 runs on parallel.engine=megatron, which has no ZeRO"
        elif ga < pp or m.llm.tie_word_embeddings:
            runnable = "megatron engine needs grad_accum >= pp and untied embeddings"
    return Plan(tp, pp, dp, zero, ckpt, mem, step, mfu, tokens, runnable, ga, gb)


def candidates(cfg, nodes: int, gpn: int):
    m, world = cfg.model, nodes * gpn
    for tp in (1, 2, 4, 8):
        if tp > gpn or m.llm.num_heads % tp or m.llm.num_kv_heads % tp or m.vit.num_heads % tp \
                or m.llm.vocab_size % tp:
            continue
        for pp in (1, 2, 4):
            if m.llm.num_layers % pp or world % (tp * pp):
                continue
            for zero in (0, 1, 2, 3):
                for ckpt in (False, True):
                    yield tp, pp, zero, ckpt


def search(cfg, hw: Hardware, nodes: int, gpn: int, margin: float = 0.1):
    """All layouts, best first: fitting and runnable ones by tokens/s, then the rest."""
    plans = [evaluate(cfg, hw, nodes, gpn, *c) for c in candidates(cfg, nodes, gpn)]
    limit = hw.memory_gb * (1 - margin)

    def key(p: Plan):
        fits = p.total_gb <= limit
        # throughput ties (within 0.5%) go to the layout that needs less memory
        return (not fits, bool(p.runnable), -round(math.log(p.tokens_per_s) / math.log(1.005)), p.total_gb)
    return sorted(plans, key=key), limit
