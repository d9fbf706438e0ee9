"""The shipped H100 layouts against hydra-plan's best layout, per model size and stage.

  python benchmarks/plan_shipped.py [--nodes 8 16] [--max-ratio 1.10]

For each unified stage config (1.5B and 7B, stages 1-3) it loads the file as shipped (layout,
micro-batch, train.global_batch = 1024, packing), predicts its step time with the planner and
compares it with the planner's best runnable layout that fits (same micro-batch and global
batch: grad_accum follows DP). Exit status 1 when any shipped file is more than --max-ratio
slower than the best (docs/performance.md, "Shipped layouts").
"""
from __future__ import annotations

import argparse
import sys

STAGES = [("1.5B", "configs/unified/stage1_alignment.yaml"),
          ("1.5B", "configs/unified/stage2_pretrain.yaml"),
          ("1.5B", "configs/unified/stage3_sft.yaml"),
          ("7B", "configs/unified/stage1_alignment_7b.yaml"),
          ("7B", "configs/unified/stage2_pretrain_7b.yaml"),
          ("7B", "configs/unified/stage3_sft_7b.yaml")]


def lay(p) -> str:
    return f"tp{p.tp} pp{p.pp} z{p.zero} {'ckpt' if p.ckpt else 'full'} ga{p.grad_accum}"


def compare(path: str, nodes: int, gpn: int = 8, gpu: str = "h100"):
    """(configured plan, best plan, limit GB) for one stage config."""
    from hydra_dist.config import load_config
    from hydra_dist.perf.planner import GPUS, evaluate, search
    cfg = load_config(path, world_size=nodes * gpn)
    hw = GPUS[gpu]
    p = cfg.parallel
    conf = evaluate(cfg, hw, nodes, gpn, p.tp, p.pp, p.zero_stage, p.activation_checkpointing)
    plans, limit = search(cfg, hw, nodes, gpn)
    best = next(x for x in plans if x.total_gb <= limit and not x.runnable)
    return conf, best, limit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--max-ratio", type=float, default=1.10)
    a = ap.parse_args(argv)
    print("| model | stage config | nodes x 8 H100 | global batch | shipped layout | shipped s/step "
          "| GB | best layout | best s/step | shipped / best |")
    print("| --- " * 10 + "|")
    worst = 0.0
    for size, path in STAGES:
        for n in a.nodes:
            conf, best, limit = compare(path, n)
            r = conf.step_s / best.step_s
            worst = max(worst, r if conf.total_gb <= limit and not conf.runnable else float("inf"))
            print(f"| {size} | {path.rsplit('/', 1)[1]} | {n} | {conf.global_batch} | {lay(conf)} | "
                  f"{conf.step_s:.3f} | {conf.total_gb:.1f} | {lay(best)} | {best.step_s:.3f} | {r:.3f} |")
    ok = worst <= a.max_ratio
    print(f"\nworst shipped / best: {worst:.3f} (limit {a.max_ratio}): {'ok' if ok else 'TOO SLOW'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
