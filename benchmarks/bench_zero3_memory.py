"""ZeRO-3 per-rank model-state memory vs plain data parallel, measured in one run of N processes.

  python benchmarks/bench_zero3_memory.py [--nproc 2] [CONFIG] [key=value ...]

Each rank builds the model, wraps it in our DeepSpeed engine (ZeRO-3), runs one step, and sums
what it actually holds: parameter partitions (ds_tensor), gradient partitions (after backward,
before the step) and optimizer state (fp32 partitions + Adam moments). The plain-DP reference is
the same model with torch AdamW, no DeepSpeed: every rank holds all parameters, gradients and
moments. The planner's prediction (hydra_dist/perf/memory.py) is printed next to both.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def nbytes(t) -> int:
    return t.numel() * t.element_size()


def zero3_held(engine) -> dict:
    """Bytes this rank holds for the model state under ZeRO-3 (DeepSpeed stage-3 optimizer)."""
    opt = engine.optimizer
    params = sum(nbytes(p.ds_tensor) for p in engine.module.parameters())
    fp32 = sum(nbytes(t) for t in getattr(opt, "fp32_partitioned_groups_flat", []))
    moments = sum(nbytes(v) for st in opt.optimizer.state.values() for v in st.values()
                  if hasattr(v, "numel") and v.numel() > 1)
    return {"params": params, "optimizer": fp32 + moments, "fp32_master": fp32}


def grads_held_zero3(engine) -> int:
    opt = engine.optimizer
    buf = getattr(opt, "grad_partitions_flat_buffer", None)
    if buf is not None:
        return nbytes(buf)
    return sum(nbytes(g) for gs in getattr(opt, "averaged_gradients", {}).values() for g in gs)


def worker(argv):
    import torch
    import torch.distributed as dist
    sys.path.insert(0, str(REPO / "tests" / "perf"))
    from batches import tiny_batch
    from hydra_dist.config import load_config
    from hydra_dist.distributed.init import init_distributed, shutdown
    from hydra_dist.models.hydra import HydraModel
    from hydra_dist.parallel.deepspeed_engine import build_deepspeed
    from hydra_dist.perf.memory import model_state_bytes
    out_file, path, overrides = argv[0], argv[1] or None, argv[2:]
    world = int(os.environ["WORLD_SIZE"])
    cfg = load_config(path, ["parallel.zero_stage=3", *overrides], world_size=world)
    layout = init_distributed(cfg.parallel.tp, 1, 300, "gloo")
    batch = tiny_batch(cfg, cfg.parallel.micro_batch_size)
    # plain data parallel: what every rank would hold without ZeRO
    torch.manual_seed(0)
    plain = HydraModel(cfg.model)
    o = cfg.train.optim
    popt = torch.optim.AdamW([p for p in plain.parameters() if p.requires_grad], lr=o.lr)
    plain(batch)["loss"].backward()
    popt.step()
    ddp = {"params": sum(nbytes(p) for p in plain.parameters()),
           "grads": sum(nbytes(p.grad) for p in plain.parameters() if p.grad is not None),
           "optimizer": sum(nbytes(v) for st in popt.state.values() for v in st.values() if v.numel() > 1)}
    del plain, popt
    torch.manual_seed(0)
    engine = build_deepspeed(HydraModel(cfg.model), cfg)
    out = engine(batch)
    engine.backward(out["loss"])
    grads = grads_held_zero3(engine)
    engine.step()
    z3 = {**zero3_held(engine), "grads": grads}
    pred = model_state_bytes(cfg, dp=layout.dp)
    pred_ddp = model_state_bytes(cfg, dp=1, zero_stage=0)
    res = {"rank": layout.rank, "zero3": z3, "ddp": ddp, "pred_zero3": pred, "pred_ddp": pred_ddp}
    allres = [None] * world
    dist.all_gather_object(allres, res)
    if layout.rank == 0:
        Path(out_file).write_text(json.dumps(allres))
    shutdown()


def table(allres, nproc) -> str:
    rows = ["| per rank (MiB) | plain DP | ZeRO-3 (measured, rank 0 / 1) | ZeRO-3 / DP | planner ZeRO-3 | planner / measured |",
            "| --- | --- | --- | --- | --- | --- |"]
    r0 = allres[0]
    for k in ("params", "grads", "optimizer"):
        meas = [r["zero3"][k] for r in allres]
        mean = sum(meas) / len(meas)
        rows.append(f"| {k} | {r0['ddp'][k] / 2**20:.3f} | " + " / ".join(f"{m / 2**20:.3f}" for m in meas)
                    + f" | {mean / max(r0['ddp'][k], 1):.3f} | {r0['pred_zero3'][k] / 2**20:.3f} | "
                    f"{r0['pred_zero3'][k] / max(mean, 1):.3f} |")
    tot_d = sum(r0["ddp"][k] for k in ("params", "grads", "optimizer"))
    tot_z = sum(r0["zero3"][k] for k in ("params", "grads", "optimizer"))
    tot_p = sum(r0["pred_zero3"][k] for k in ("params", "grads", "optimizer"))
    rows.append(f"| total | {tot_d / 2**20:.3f} | {tot_z / 2**20:.3f} (rank 0) | {tot_z / tot_d:.3f} | "
                f"{tot_p / 2**20:.3f} | {tot_p / tot_z:.3f} |")
    return "\n".join(rows) + f"\n(dp = {nproc}; plain DP measured: planner says " \
        f"{sum(r0['pred_ddp'][k] for k in ('params', 'grads', 'optimizer')) / tot_d:.3f} x of it)"


def run(nproc: int, path: str, overrides: list[str], timeout: float = 600) -> list:
    sys.path.insert(0, str(REPO / "tests"))
    from launch import run_torchrun
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "res.json"
        p = run_torchrun(nproc, [str(out), path or "", *overrides], timeout=timeout,
                         script=str(Path(__file__).resolve()), env={"HYDRA_ZERO3_WORKER": "1"})
        if p.returncode != 0:
            raise RuntimeError(p.stdout[-4000:])
        return json.loads(out.read_text())


def main():
    if os.environ.get("HYDRA_ZERO3_WORKER"):
        return worker(sys.argv[1:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("config", nargs="?", default="configs/model/tiny.yaml")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    print(table(run(a.nproc, a.config, a.overrides), a.nproc))


if __name__ == "__main__":
    main()
