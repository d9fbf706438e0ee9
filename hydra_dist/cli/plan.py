"""hydra-plan: per-GPU memory, predicted step time and MFU of a training layout on an H100/H200
cluster, and the best layout that fits (docs/performance.md).

  hydra-plan CONFIG --nodes N [--gpus-per-node 8] [--gpu h100|h200] [key=value ...]

The configured layout (parallel.tp / pp / zero_stage / activation_checkpointing) is shown first,
then the top layouts of a search over tp in {1,2,4,8}, pp in {1,2,4}, ZeRO 0-3 and checkpointing,
ranked by predicted tokens/s among those that fit in GPU memory minus --margin.
"""
from __future__ import annotations

import argparse
import json
import sys


def _row(p, limit) -> str:
    m = {k: v / 1e9 for k, v in p.mem.items()}
    fits = "yes" if p.total_gb <= limit else "NO"
    note = p.runnable or ""
    return (f"| tp{p.tp} pp{p.pp} dp{p.dp} z{p.zero} {'ckpt' if p.ckpt else 'full'} ga{p.grad_accum} | "
            f"{m['params']:.1f} | {m['grads']:.1f} | {m['optimizer']:.1f} | {m['activations']:.1f} | "
            f"{m['recompute_peak'] + m['zero3_buffers'] + m['reserve']:.1f} | {p.total_gb:.1f} | {fits} | "
            f"{p.step_s:.3f} | {p.mfu * 100:.1f}% | {p.tokens_per_s:,.0f} | {note} |")


HEADER = ("| layout | params GB | grads GB | optim GB | activ. GB | buffers GB | total GB | fits | "
          "step s | MFU | tokens/s | note |\n" + "| --- " * 12 + "|")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="hydra-plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", help="key=value overrides (e.g. parallel.micro_batch_size=2)")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--gpu", choices=["h100", "h200"], default="h100")
    ap.add_argument("--margin", type=float, default=0.1, help="memory share kept free (default 0.1)")
    ap.add_argument("--efficiency", type=float, default=None,
                    help="assumed matmul efficiency vs peak (default 0.55)")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_intermixed_args(argv)
    from hydra_dist.config import load_config
    from hydra_dist.perf.memory import shape_of_config
    from hydra_dist.perf.planner import GPUS, evaluate, global_batch_of, search
    cfg = load_config(a.config, a.overrides)
    hw = GPUS[a.gpu]
    if a.efficiency:
        hw.matmul_efficiency = a.efficiency
    p = cfg.parallel
    world = a.nodes * a.gpus_per_node
    if world % (p.tp * p.pp):
        print(f"parallel.tp*pp = {p.tp * p.pp} does not divide {world} GPUs", file=sys.stderr)
        return 2
    configured = evaluate(cfg, hw, a.nodes, a.gpus_per_node, p.tp, p.pp, p.zero_stage,
                          p.activation_checkpointing)
    plans, limit = search(cfg, hw, a.nodes, a.gpus_per_node, a.margin)
    best = next((x for x in plans if x.total_gb <= limit and not x.runnable), None)
    if a.json:
        def d(x):
            return {"tp": x.tp, "pp": x.pp, "dp": x.dp, "zero": x.zero, "ckpt": x.ckpt, "mem": x.mem,
                    "total_gb": x.total_gb, "step_s": x.step_s, "mfu": x.mfu,
                    "tokens_per_s": x.tokens_per_s, "runnable": x.runnable, "grad_accum": x.grad_accum}
        print(json.dumps({"global_batch": configured.global_batch, "configured": d(configured), "recommended": d(best) if best else None,
                          "top": [d(x) for x in plans[:a.top]], "limit_gb": limit}, indent=1))
        return 0
    s = shape_of_config(cfg)
    print(f"{a.config}: {a.nodes} node(s) x {a.gpus_per_node} {hw.name}, bf16; micro-batch "
          f"{p.micro_batch_size} ({s.rows} rows x {s.seq} tokens, {s.images} images); "
          f"fits = total <= {limit:.0f} GB ({a.margin:.0%} margin)")
    gb = global_batch_of(cfg, world)
    print(f"global batch {gb} samples per step ({'train.global_batch' if cfg.train.global_batch else 'micro x grad_accum x dp of the configured layout'}), "
          f"held fixed: every layout's grad_accum (ga) = {gb} / (micro x dp)")
    print(f"assumed: {hw.peak_tflops:.0f} TFLOPs peak x {hw.matmul_efficiency:.2f} matmul efficiency, "
          f"NVLink {hw.nvlink_gbps:.0f} GB/s, IB {hw.ib_gbps:.0f} GB/s per GPU, {hw.overlap:.0%} of "
          f"DP comm hidden, {hw.reserve_gb:.0f} GB reserve\n")
    print("configured layout:")
    print(HEADER)
    print(_row(configured, limit))
    print(f"\ntop {a.top} layouts:")
    print(HEADER)
    for x in plans[:a.top]:
        print(_row(x, limit))
    if best:
        print(f"\nrecommended: parallel.tp={best.tp} parallel.pp={best.pp} parallel.zero_stage={best.zero} "
              f"parallel.activation_checkpointing={str(best.ckpt).lower()}  "
              f"({best.total_gb:.1f} GB, {best.mfu * 100:.1f}% MFU, {best.tokens_per_s:,.0f} tokens/s predicted)")
    else:
        print("\nno runnable layout fits: lower parallel.micro_batch_size or add nodes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
