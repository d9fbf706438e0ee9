"""Export memory and throughput: the streaming reader + sharded writer vs a raw copy of the same
bytes, on a synthetic checkpoint of N fp32 tensors of M MB: DeepSpeed ZeRO-3 layout (dp=2), or
with --layout megatron the megatron engine's (model_ppXX_tpYY.safetensors, pp=2 x tp=2; each
tensor column-parallel, so every load merges two TP slices).

  python benchmarks/bench_export.py [--layout zero3|megatron] [--tensors 6] [--mb 64] [--shard-mb 128]

Prints peak RSS above the post-import baseline (deepspeed imported) (VmHWM delta, measured in a fresh process) next
to the largest tensor and shard size, and export time vs `cp` of the files holding the weights.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import torch

CHILD = r"""
import json, sys, time
import torch
from hydra_dist.export.ds_reader import _ds_safe_globals
from hydra_dist.export.readers import open_checkpoint
from hydra_dist.export.st_io import ShardedWriter
_ds_safe_globals()  # imports deepspeed (~100 MB of modules): part of the baseline, not of the export
import hydra_dist.models.pipeline_stage  # the megatron reader's chunk_layers (megatron-core): baseline too
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
base = hwm()
t0 = time.perf_counter()
ck = open_checkpoint(sys.argv[1])
w = ShardedWriter(sys.argv[2], int(sys.argv[3]), [(n, ck.shape(n), ck.dtype(n)) for n in ck.names()])
for n in ck.names():
    w.add(n, ck.load(n))
w.close()
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_delta": hwm() - base, "base": base}))
"""


def make_checkpoint(folder: Path, tensors: int, mb: int, dp: int = 2) -> int:
    numel = mb * 2 ** 20 // 4
    side = int(math.isqrt(numel))
    shapes = OrderedDict((f"llm.layers.{i}.mlp.up.weight", torch.Size([side, side])) for i in range(tensors))
    chunks = [math.ceil(s.numel() / dp) for s in shapes.values()]
    for r in range(dp):
        flat = torch.randn(sum(chunks))
        torch.save({"param_shapes": [shapes], "buffer_names": [], "module": {}, "shared_params": {},
                    "frozen_param_shapes": {}, "frozen_param_fragments": {}},
                   folder / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt")
        torch.save({"optimizer_state_dict": {"zero_stage": 3, "partition_count": dp,
                                             "fp32_flat_groups": [flat]}},
                   folder / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
    return side * side * 4


def make_megatron_checkpoint(folder: Path, tensors: int, mb: int, pp: int = 2, tp: int = 2) -> int:
    """Layer i on stage i // (tensors / pp), as pipeline_stage.chunk_layers puts it."""
    from safetensors.torch import save_file
    if tensors % pp:
        raise ValueError(f"--tensors {tensors}: must be a multiple of pp={pp}")
    side = int(math.isqrt(mb * 2 ** 20 // 4))
    side -= side % tp
    per = tensors // pp
    meta = {"layout": json.dumps({"tp": tp, "pp": pp, "virtual_pp": 1})}
    for p in range(pp):
        for t in range(tp):
            sd = {f"llm.layers.{i}.mlp.up.weight": torch.randn(side // tp, side)
                  for i in range(p * per, (p + 1) * per)}
            save_file(sd, str(folder / f"model_pp{p:02d}_tp{t:02d}.safetensors"), metadata=meta)
    return side * side * 4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", choices=("zero3", "megatron"), default="zero3")
    ap.add_argument("--tensors", type=int, default=6)
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--shard-mb", type=int, default=128)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ck, out, raw = Path(tmp) / "ck", Path(tmp) / "out", Path(tmp) / "raw"
        ck.mkdir()
        raw.mkdir()
        make = make_megatron_checkpoint if a.layout == "megatron" else make_checkpoint
        tbytes = make(ck, a.tensors, a.mb)
        t0 = time.perf_counter()
        for f in ck.glob("model_pp*" if a.layout == "megatron" else "*optim_states.pt"):
            shutil.copyfile(f, raw / f.name)
        raw_s = time.perf_counter() - t0
        res = json.loads(subprocess.check_output([sys.executable, "-c", CHILD, str(ck), str(out),
                                                  str(a.shard_mb * 2 ** 20)]).decode().strip().splitlines()[-1])
    total = tbytes * a.tensors
    print(f"| layout | checkpoint | largest tensor | shard | export s | raw copy s | ratio | peak RSS delta |")
    print(f"| {a.layout} | {total / 2**20:.0f} MB | {tbytes / 2**20:.0f} MB | {a.shard_mb} MB | {res['seconds']:.2f} | "
          f"{raw_s:.2f} | {res['seconds'] / max(raw_s, 1e-9):.1f}x | {res['peak_delta'] / 2**20:.0f} MB |")


if __name__ == "__main__":
    main()
