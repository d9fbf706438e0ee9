"""A bf16 training run of HYDRA-1.5B widths (reduced depth) through the real trainer on a 1-rank
NCCL group, its MFU and peak GPU memory held against the planner's prediction for the same
config (hydra_dist.perf.planner.evaluate). Ratios measured in one run: measured / predicted.

  python benchmarks/gpu_step.py [--config configs/unified/stage2_pretrain.yaml] [--llm-layers 4]
                                [--vit-layers 2] [--mb 4] [--steps 6] [--json OUT]
  python benchmarks/gpu_step.py --dry-run      (CPU, gloo, tiny config: checks the script runs)

The run is `torchrun --nproc_per_node 1 -m hydra_dist.cli.pretrain CONFIG ...` with only depth,
the layout (tp=1 on one GPU), the batch (global = micro: no accumulation), synthetic data and the
byte tokenizer overridden; tracking is off (no MLflow on a bare GPU box). The first step is
dropped (allocator warm-up, CUDA kernels' first launch, flash-attn's plan cache).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 2 ** 30


def overrides(a, out: Path) -> list[str]:
    site = ["model.init_from=", "model.tokenizer_from=", "data.tokenizer=byte", "data.sources=[]",
            "data.synthetic.num_samples=256", "tracking.enabled=false", "train.eval_every=0",
            f"train.steps={a.steps}", f"train.global_batch={a.mb}", f"parallel.micro_batch_size={a.mb}",
            "parallel.tp=1", "parallel.pp=1", "checkpoint.every=1000000", f"output_dir={out}"]
    if a.dry_run:
        return [*site, "parallel.backend=gloo", "parallel.precision=fp32", "data.num_workers=0",
                "data.pin_memory=false", "data.synthetic.num_samples=32"]
    return [*site, "parallel.backend=nccl", "parallel.precision=bf16", "data.num_workers=4",
            f"model.llm.num_layers={a.llm_layers}", f"model.vit.gen_layers={a.vit_layers}",
            f"model.vit.sem_layers={a.vit_layers}"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/unified/stage2_pretrain.yaml")
    ap.add_argument("--llm-layers", type=int, default=4)
    ap.add_argument("--vit-layers", type=int, default=2)
    ap.add_argument("--mb", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--timeout", type=float, default=420)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    if a.dry_run:
        a.config, a.steps, a.mb = "configs/tiny_cpu.yaml", 3, 2
    out = Path(tempfile.mkdtemp(prefix="hydra_gpu_step_"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_addr",
           "127.0.0.1", "--master_port", str(29000 + os.getpid() % 1000), "-m", "hydra_dist.cli.pretrain",
           a.config, *overrides(a, out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    print("run:", " ".join(cmd[cmd.index("hydra_dist.cli.pretrain"):]), flush=True)
    res = subprocess.run(cmd, cwd=REPO, env=env, timeout=a.timeout, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    (out / "trainer.log").write_text(res.stdout)
    if res.returncode != 0:
        print(res.stdout[-6000:])
        print(f"gpu_step: the trainer failed (rc {res.returncode}); log {out / 'trainer.log'}")
        return 1
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    steady = rows[1:] or rows
    med = {k: statistics.median(r[k] for r in steady) for k in ("mfu", "tflops_per_s", "step_time_s",
                                                                "tokens_per_s")}
    peak_gb = max(r.get("gpu_peak_gb", 0.0) for r in rows)

    from hydra_dist.config import load_config
    from hydra_dist.perf.planner import GB, GPUS, evaluate
    cfg = load_config(str(out / "config.yaml"), world_size=1)
    import torch
    name = torch.cuda.get_device_name() if torch.cuda.is_available() and not a.dry_run else "cpu"
    hw = GPUS["h200" if "h200" in name.lower() else "h100"]
    p = cfg.parallel
    plan = evaluate(cfg, hw, 1, 1, 1, 1, p.zero_stage, p.activation_checkpointing)
    # max_memory_allocated counts tensors only: compare it with the plan less its fixed reserve
    predicted_gb = (sum(plan.mem.values()) - plan.mem["reserve"]) / GB
    report = {"device": name, "config": a.config, "steps": len(rows), "losses": [r["loss"] for r in rows],
              "measured": {**med, "gpu_peak_gb": peak_gb * GIB / GB},
              "planner": {"mfu": plan.mfu, "step_time_s": plan.step_s, "memory_gb": predicted_gb,
                          "memory_parts_gb": {k: v / GB for k, v in plan.mem.items()}},
              "ratio": {"mfu": med["mfu"] / plan.mfu if plan.mfu else None,
                        "step_time": med["step_time_s"] / plan.step_s if plan.step_s else None,
                        "memory": (peak_gb * GIB / GB) / predicted_gb if peak_gb and predicted_gb else None}}
    print(f"gpu_step: {name}, {a.config}, {len(rows)} steps, losses {report['losses'][0]:.4f} -> "
          f"{report['losses'][-1]:.4f}")
    print("| quantity | measured | planner | measured / planner |")
    print("| --- | --- | --- | --- |")
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    print(f"| MFU | {med['mfu'] * 100:.1f}% | {plan.mfu * 100:.1f}% | {fmt(report['ratio']['mfu'], '.2f')} |")
    print(f"| step time s | {med['step_time_s']:.3f} | {plan.step_s:.3f} | {fmt(report['ratio']['step_time'], '.2f')} |")
    print(f"| peak memory GB | {fmt(peak_gb * GIB / GB if peak_gb else None, '.1f')} | {predicted_gb:.1f} | "
          f"{fmt(report['ratio']['memory'], '.2f')} |")
    print(f"| tokens/s | {med['tokens_per_s']:,.0f} | {plan.tokens_per_s:,.0f} | |")
    ok = all(math.isfinite(x) for x in report["losses"])
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
