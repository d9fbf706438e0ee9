"""Framework overhead of one training step: our full stack (DeepSpeed ZeRO engine, HydraModel,
the trainer's step mechanics: loss-denominator all-reduce, non-finite guard, logged-loss
all-reduce, grad norm, MFU metrics) vs a plain single-process PyTorch loop of the same model
(torch AdamW, clip_grad_norm_, no DeepSpeed), on the same pre-collated batches, one process.

  python benchmarks/bench_step.py [--zero 0,2,3] [--steps 4] [--rounds 5] [--mb 8] [--tiny] [key=value ...]

By default the model is the tiny config widened to where framework overhead is not everything
(WIDTH below: an LLM of hidden 1024 and 4 layers, ViTs 256 wide); --tiny keeps the tiny widths.
Every loop is built once; each round runs plain, then each ZeRO stage, so all loops see the same
machine load; the table prints the median over rounds of ms per step and of the per-round
ratio ours / plain, plus where our step's extra time goes (profiled ops).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "perf"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")


WIDTH = ["model.llm.hidden_size=1024", "model.llm.num_layers=4", "model.llm.num_heads=16",
         "model.llm.num_kv_heads=4", "model.llm.ffn_size=2816", "model.vit.hidden_size=256",
         "model.vit.num_heads=4", "model.vit.mlp_size=1024", "model.head.flow_head_hidden=1024",
         "model.head.time_embed_dim=256"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--zero", default="0,2,3", help="ZeRO stages to compare, comma-separated")
    ap.add_argument("--mb", type=int, default=8)
    ap.add_argument("--config", default="configs/model/tiny.yaml")
    ap.add_argument("--tiny", action="store_true", help="the config's own widths, not WIDTH")
    ap.add_argument("--profile", action="store_true", help="also print the top ops of each loop")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_intermixed_args()
    import logging
    logging.disable(logging.WARNING)
    import torch
    from batches import tiny_batch
    from hydra_dist.config import load_config
    from hydra_dist.distributed.init import init_distributed
    from hydra_dist.models.hydra import HydraModel
    from hydra_dist.parallel.deepspeed_engine import param_groups
    from hydra_dist.perf.mfu import mfu_metrics
    from hydra_dist.train.run_setup import build_deepspeed_engine
    from hydra_dist.train.tasks.unified import UnifiedTask
    stages = [int(z) for z in a.zero.split(",")]
    over = ([] if a.tiny else WIDTH) + [f"parallel.micro_batch_size={a.mb}",
                                        "train.optim.warmup_steps=0", "train.peak_tflops=1",
                                        *a.overrides]
    cfgs = {z: load_config(a.config, over + [f"parallel.zero_stage={z}"]) for z in stages}
    cfg = cfgs[stages[0]]
    layout = init_distributed(1, 1, 120, "gloo")
    batches = [tiny_batch(cfg, a.mb, pack_tokens=cfg.data.pack_tokens) for _ in range(4)]
    torch.manual_seed(0)
    plain = HydraModel(cfg.model)
    n_params = sum(p.numel() for p in plain.parameters())
    o = cfg.train.optim
    opt = torch.optim.AdamW(param_groups(plain, cfg), lr=o.lr, betas=tuple(o.betas), eps=o.eps)

    def plain_step(i):
        b = batches[i % len(batches)]
        out = plain(b, noise_seed=i)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), o.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out["loss"].item()

    def make_ours(z):
        torch.manual_seed(0)
        c = cfgs[z]
        engine, task = build_deepspeed_engine(HydraModel(c.model), c, layout), UnifiedTask(c)

        def ours_step(i):
            bs = [batches[i % len(batches)]]
            t0 = time.perf_counter()
            shaped, spec = task.prepare_step(bs, i, layout)   # the loss-denominator exchange too
            res = engine.train_step(shaped, spec)
            m = {"loss": res.acc[0].item(), "grad_norm": engine.get_global_grad_norm()}
            m.update(mfu_metrics(c, bs, time.perf_counter() - t0, 1, engine.device))
            return m["loss"]
        return ours_step

    loops = {"plain": plain_step, **{f"zero{z}": make_ours(z) for z in stages}}
    for fn in loops.values():   # warm-up (allocations, DeepSpeed's first-step set-up)
        for i in range(2):
            fn(i)
    per = {k: [] for k in loops}
    for r in range(a.rounds):
        for k, fn in loops.items():
            t0 = time.perf_counter()
            for i in range(a.steps):
                fn(i)
            per[k].append((time.perf_counter() - t0) / a.steps)
    b = batches[0]
    print(f"config {a.config} {'(tiny widths)' if a.tiny else '+ WIDTH'} {' '.join(a.overrides)}; "
          f"{n_params / 1e6:.1f} M parameters; micro-batch {a.mb} ({tuple(b['input_ids'].shape)} "
          f"tokens, {b['images'].shape[0]} images); {torch.get_num_threads()} threads; "
          f"{a.rounds} interleaved rounds x {a.steps} steps")
    print("| loop | ms / step (median) | ours / plain (median of per-round ratios) |")
    print("| --- | --- | --- |")
    print(f"| plain PyTorch (AdamW, clip) | {statistics.median(per['plain']) * 1e3:.1f} | 1.00 |")
    for z in stages:
        ratios = [t / p for t, p in zip(per[f"zero{z}"], per["plain"])]
        print(f"| ours (DeepSpeed ZeRO-{z} + trainer step) | "
              f"{statistics.median(per[f'zero{z}']) * 1e3:.1f} | {statistics.median(ratios):.2f} "
              f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}) |")
    if a.profile:   # where the time goes: top ops by self CPU time, a few steps of each
        from torch.profiler import ProfilerActivity, profile
        for name, fn in loops.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for i in range(3):
                    fn(i)
            ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            print(f"-- top self-CPU ops, {name} (ms / step): " +
                  ", ".join(f"{e.key} {e.self_cpu_time_total / 3 / 1e3:.1f}" for e in ev[:8]))


if __name__ == "__main__":
    main()
