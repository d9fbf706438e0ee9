"""What resuming on another DP size costs (hydra_dist/checkpoint/reshard.py), against
DeepSpeed's own load_checkpoint, in one run on this machine. The same model (an LLM of hidden
1024 x 4 layers, ~42M trainable parameters) is saved under ZeRO-3 DP=2 and DP=1. Both loads end
in the same layout, DP=1: the DP=1 checkpoint through DeepSpeed (the reference) and the DP=2
one resharded. Prints load time and the peak resident memory each load added, with the state
size for scale.

  python benchmarks/bench_reshard.py [--dir /tmp] [--hidden 1024] [--layers 4] [--engine megatron]

--engine megatron does the same for the megatron engine (checkpoint/megatron_reshard.py): saved
under PP=2 and PP=1, both loaded on PP=1.
Peak memory of the resharding load is bounded by one parameter (x3 for master and moments)
beyond the engine itself; DeepSpeed's load reads each rank's whole files."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def torchrun(n: int, target: list, log: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
           "--master_addr", "127.0.0.1", "--master_port", str(29700 + n), *target]
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    if rc:
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}); see {log}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=None)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--engine", choices=("deepspeed", "megatron"), default="deepspeed",
                    help="deepspeed: ZeRO-3 DP=2 -> DP=1; megatron: PP=2 -> PP=1")
    a = ap.parse_args(argv)
    mg = a.engine == "megatron"
    # the two layouts saved (processes, overrides); both are loaded on the second one
    saved_as = {2: ["parallel.engine=megatron", "parallel.zero_stage=0", "parallel.pp=2"] if mg else [],
                1: ["parallel.engine=megatron", "parallel.zero_stage=0", "parallel.pp=1"] if mg else []}
    what = "megatron PP=2" if mg else "ZeRO-3 DP=2"
    h = a.hidden
    cfg = ["configs/tiny_cpu.yaml", "data.synthetic.num_samples=64", "train.global_batch=8",
           "tracking.enabled=false", f"model.llm.hidden_size={h}", f"model.llm.num_layers={a.layers}",
           f"model.llm.ffn_size={h * 11 // 4}", f"model.llm.num_heads={h // 64}",
           "model.llm.num_kv_heads=4"]
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        runs = {}
        for n in (2, 1):   # the same model saved under DP=2 and under DP=1
            run = Path(d) / f"saved_dp{n}"
            torchrun(n, ["-m", "hydra_dist.cli.pretrain", *cfg, *saved_as[n], "train.steps=1",
                         f"output_dir={run}"],
                     Path(d) / f"train{n}.log")
            runs[n] = run
        tag = (runs[2] / "checkpoints" / "latest").read_text().strip()
        state_mb = sum(f.stat().st_size for f in (runs[2] / "checkpoints" / tag).rglob("*")
                       if f.is_file()) / 2 ** 20
        results = {}
        # Both loads end in the same layout (DP=1), holding the same amount of state.
        names = (("the engine's own load of a PP=1 checkpoint (reference)",
                  "resharded by name: the PP=2 checkpoint onto PP=1") if mg else
                 ("DeepSpeed load_checkpoint of a DP=1 checkpoint (reference)",
                  "resharded: the DP=2 checkpoint onto DP=1"))
        for saved, name in ((1, names[0]), (2, names[1])):
            copy = Path(d) / f"load{saved}"
            shutil.copytree(runs[saved], copy)
            out = Path(d) / f"load{saved}.jsonl"
            torchrun(1, [str(HERE / "reshard_worker.py"), str(out), *cfg, *saved_as[1],
                         f"output_dir={copy}"],
                     Path(d) / f"load{saved}.log")
            results[name] = [json.loads(x) for x in out.read_text().splitlines()]
            shutil.rmtree(copy)
    print(f"checkpoint: {state_mb:.0f} MiB on disk ({what}, LLM hidden {h} x {a.layers} layers)")
    print("| load | ranks | seconds (slowest rank) | peak memory added per rank (MiB, largest) |")
    print("| --- | --- | --- | --- |")
    for name, rows in results.items():
        print(f"| {name} | {len(rows)} | {max(r['load_s'] for r in rows):.2f} | "
              f"{max(r['peak_added_mb'] for r in rows):.0f} |")
    (ds, rs) = (max(r["load_s"] for r in v) for v in results.values())
    (dm, rm) = (max(r["peak_added_mb"] for r in v) for v in results.values())
    print(f"resharded / reference: load time {rs / ds:.2f}, peak memory added {rm / max(dm, 1):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
