"""The training loader as a stage config builds it (default: 7B stage 2, the shipped file's
workers, pinned memory, prefetch, packing and micro-batch) vs a plain decode loop over the same
MDS shards, time to first batch, and the rate one GPU needs on 8 H100s (one run).

  python benchmarks/bench_data.py [--config configs/unified/stage2_pretrain_7b.yaml] [--samples 800]

The need is the planner's: its predicted step time for the config's layout on 1 x 8 H100
(perf/planner.evaluate: the FLOPs model at the config's shape, packing and labelled rows) and
the global batch over DP. Exit 1 when the loader delivers less than --min-headroom x the need.
The loader's rate is that of THIS host's cores (os.cpu_count() is printed): an H100 node gives
each GPU ~12-24 cores where this box has 2 in all.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def write_source(out: Path, n: int, size: int) -> Path:
    from streaming import MDSWriter

    from hydra_dist.data.integrity import SHARD_HASH, hashed_columns, with_digest
    from hydra_dist.data.schemas import SCHEMAS
    from hydra_dist.data.synthetic import make_sample
    from hydra_dist.data.transforms import encode_jpeg
    # as hydra-prepare-data writes them: per-sample digests (checked on read) and shard hashes
    with MDSWriter(out=str(out), columns=hashed_columns(SCHEMAS["image_caption"]),
                   size_limit="32mb", hashes=[SHARD_HASH]) as w:
        for i in range(n):
            img, cap, _ = make_sample(i, 0, size)
            w.write(with_digest({"id": i, "key": str(i), "image": encode_jpeg(img),
                                 "caption": cap, "width": size, "height": size}))
    return out


def plain_loop(path: Path, size: int, n: int) -> float:
    """The reference: StreamingDataset rows, PIL decode, resize+crop, to tensor; no loader."""
    from streaming import StreamingDataset

    from hydra_dist.data.transforms import decode_image, vit_transform
    ds = StreamingDataset(local=str(path), shuffle=False, batch_size=1)
    t0 = time.perf_counter()
    for i in range(n):
        vit_transform(decode_image(ds[i]["image"]), size)
    return n / (time.perf_counter() - t0)


def stage_config(path: str, src: Path, overrides=()):
    """The stage config as shipped, its data sources pointed at the synthetic shards (and the
    byte tokenizer: the Qwen tokenizer folder is not on this machine; text is a small part of
    a sample's cost)."""
    from hydra_dist.config import load_config
    cfg = load_config(path, ["data.tokenizer=byte", *overrides], check_files=False)
    for s in cfg.data.sources:
        s.path = str(src)
    return cfg


def loader_run(cfg, n: int):
    """Samples/s of the training loader exactly as the trainer builds it for one rank
    (train/run_setup.build_loader: collator, packing, workers, pinned memory, prefetch)."""
    from types import SimpleNamespace

    from hydra_dist.train.run_setup import build_loader
    one_rank = SimpleNamespace(dp=1, tp=1, pp=1)   # a loader serves one rank: its rate is per GPU
    mb = cfg.parallel.micro_batch_size
    t0 = time.perf_counter()
    ld = build_loader(cfg, "", one_rank)
    next(ld)
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    steps = max(1, n // mb - 1)
    for _ in range(steps):
        next(ld)
    return first, steps * mb / (time.perf_counter() - t1)


def required_rate(cfg, nodes: int = 1, gpn: int = 8):
    """Samples/s one GPU's loader must deliver: the planner's predicted step on nodes x gpn H100s
    for the config's layout (its FLOPs model at the config's shape and efficiency), global batch
    over DP (the TP ranks of a group each load the same samples)."""
    from hydra_dist.perf.planner import GPUS, evaluate
    p = cfg.parallel
    plan = evaluate(cfg, GPUS["h100"], nodes, gpn, p.tp, p.pp, p.zero_stage, p.activation_checkpointing)
    dp = nodes * gpn // (p.tp * p.pp)
    return plan.global_batch / dp / plan.step_s, plan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/unified/stage2_pretrain_7b.yaml")
    ap.add_argument("--samples", type=int, default=800)
    ap.add_argument("--source-size", type=int, default=512, help="stored image side")
    ap.add_argument("--min-headroom", type=float, default=4.0)
    ap.add_argument("overrides", nargs="*", help="key=value on top of the config (e.g. data.num_workers=2)")
    a = ap.parse_args()
    import os

    from streaming.base.util import clean_stale_shared_memory
    clean_stale_shared_memory()
    with tempfile.TemporaryDirectory() as tmp:
        src = write_source(Path(tmp) / "mds", a.samples, a.source_size)
        cfg = stage_config(a.config, src, a.overrides)
        d, size = cfg.data, cfg.model.vit.image_size
        plain = plain_loop(src, size, min(a.samples, 300))
        first, rate = loader_run(cfg, a.samples)
    need, plan = required_rate(cfg)
    rows = [("plain decode loop (1 process, no collate)", f"{plain:,.0f} samples/s", "1.00"),
            (f"training loader as configured ({d.num_workers} workers, pin_memory={d.pin_memory}, "
             f"prefetch {d.prefetch_factor}, pack_tokens={d.pack_tokens})", f"{rate:,.0f} samples/s",
             f"{rate / plain:.2f}"),
            ("time to first batch", f"{first:.2f} s", ""),
            (f"needed per GPU: {a.config.rsplit('/', 1)[-1]} on 1 x 8 H100 (planner: "
             f"{plan.step_s:.3f} s/step, global batch {plan.global_batch})", f"{need:,.1f} samples/s",
             f"{rate / need:.1f}x headroom")]
    w = max(len(r[0]) for r in rows)
    print(f"{a.config}: {a.samples} samples, stored {a.source_size}px JPEG -> {size}px, "
          f"micro-batch {cfg.parallel.micro_batch_size}; this host: {os.cpu_count()} cores")
    print(f"{'measure':<{w}} | {'value':>18} | ratio")
    print("-" * (w + 30))
    for r in rows:
        print(f"{r[0]:<{w}} | {r[1]:>18} | {r[2]}")
    ok = rate >= a.min_headroom * need
    print(f"headroom {rate / need:.1f}x (goal >= {a.min_headroom}x): {'ok' if ok else 'SHORT'}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
