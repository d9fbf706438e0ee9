"""Framework overhead of one training step: our full stack (DeepSpeed ZeRO engine, HydraModel,
the trainer's step mechanics: loss-denominator all-reduce, non-finite guard, logged-loss
all-reduce, grad norm, MFU metrics) vs a plain single-process PyTorch loop of the same model
(torch AdamW, clip_grad_norm_, no DeepSpeed), on the same pre-collated batches, one process.

  python benchmarks/bench_step.py [--steps 8] [--rounds 3] [--zero 3] [--mb 8] [key=value ...]

Rounds alternate plain / ours so both see the same machine load; the table prints median ms per
step and the ratio, plus where our step's extra time goes (profiled phases).
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--zero", type=int, default=3)
    ap.add_argument("--mb", type=int, default=8)
    ap.add_argument("--config", default="configs/model/tiny.yaml")
    ap.add_argument("--persist", type=int, default=-1,
                    help="ZeRO-3 stage3_param_persistence_threshold for this run (default: ours, 0)")
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
    cfg = load_config(a.config, [f"parallel.zero_stage={a.zero}", f"parallel.micro_batch_size={a.mb}",
                                 "train.optim.warmup_steps=0", "train.peak_tflops=1", *a.overrides])
    layout = init_distributed(1, 1, 120, "gloo")
    if a.persist >= 0:   # measure another stage3_param_persistence_threshold (benchmark only)
        import hydra_dist.parallel.deepspeed_engine as dse
        base = dse.ds_config

        def patched(c):
            d = base(c)
            d["zero_optimization"]["stage3_param_persistence_threshold"] = a.persist
            return d
        dse.ds_config = patched
    batches = [tiny_batch(cfg, a.mb, pack_tokens=cfg.data.pack_tokens) for _ in range(4)]
    torch.manual_seed(0)
    plain = HydraModel(cfg.model)
    o = cfg.train.optim
    opt = torch.optim.AdamW(param_groups(plain, cfg), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    torch.manual_seed(0)
    engine, task = build_deepspeed_engine(HydraModel(cfg.model), cfg, layout), UnifiedTask(cfg)

    def plain_step(i):
        b = batches[i % len(batches)]
        out = plain(b, noise_seed=i)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), o.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out["loss"].item()

    def ours_step(i):
        bs = [batches[i % len(batches)]]
        t0 = time.perf_counter()
        shaped, spec = task.prepare_step(bs, i, layout)   # the loss-denominator exchange too
        res = engine.train_step(shaped, spec)
        m = {"loss": res.acc[0].item(), "grad_norm": engine.get_global_grad_norm()}
        m.update(mfu_metrics(cfg, bs, time.perf_counter() - t0, 1, engine.device))
        return m["loss"]

    for i in range(2):   # warm-up (allocations, DeepSpeed's first-step set-up)
        plain_step(i)
        ours_step(i)
    tp, to = [], []
    for r in range(a.rounds):
        t0 = time.perf_counter()
        for i in range(a.steps):
            plain_step(i)
        tp.append((time.perf_counter() - t0) / a.steps)
        t0 = time.perf_counter()
        for i in range(a.steps):
            ours_step(i)
        to.append((time.perf_counter() - t0) / a.steps)
    mp, mo = statistics.median(tp), statistics.median(to)
    # where the time goes: profile a few steps of each, top ops by self CPU time
    from torch.profiler import ProfilerActivity, profile
    tops = {}
    for name, fn in (("plain", plain_step), ("ours", ours_step)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(3):
                fn(i)
        ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        tops[name] = [(e.key, e.self_cpu_time_total / 3 / 1e3) for e in ev[:8]]
    # the per-sample noise loop at the 448 px shape (1024 patches x C=64) vs its floor: the same
    # number of normals drawn in one call (what any per-sample-reproducible scheme must draw)
    ids, mu = torch.arange(a.mb), torch.zeros(a.mb, 1024, 64)
    noise_t = {}
    for name, fn in (("loop", lambda: plain.flow_noise(ids, 5, mu)),
                     ("floor", lambda: torch.randn(a.mb, 1024, 64))) * 10:
        t0 = time.perf_counter()
        fn()
        noise_t[name] = min(noise_t.get(name, 1e9), time.perf_counter() - t0)
    b = batches[0]
    persist = f" persistence threshold {a.persist}" if a.persist >= 0 else ""
    print(f"config {a.config} {' '.join(a.overrides)}; ZeRO-{a.zero}{persist}; micro-batch {a.mb} "
          f"({tuple(b['input_ids'].shape)} tokens, {b['images'].shape[0]} images); "
          f"{torch.get_num_threads()} threads; {a.rounds} rounds x {a.steps} steps")
    print("| loop | ms / step (median) | ratio vs plain |")
    print("| --- | --- | --- |")
    print(f"| plain PyTorch (AdamW, clip) | {mp * 1e3:.1f} | 1.00 |")
    print(f"| ours (DeepSpeed ZeRO-{a.zero} + trainer step) | {mo * 1e3:.1f} | {mo / mp:.2f} |")
    print(f"| flow_noise at 448 px, {a.mb} images (per-sample loop) | {noise_t['loop'] * 1e3:.1f} | "
          f"{noise_t['loop'] / noise_t['floor']:.2f} x one randn call ({noise_t['floor'] * 1e3:.1f} ms) |")
    for name in ("plain", "ours"):
        print(f"-- top self-CPU ops, {name} (ms / step): " +
              ", ".join(f"{k} {v:.1f}" for k, v in tops[name]))


if __name__ == "__main__":
    main()
