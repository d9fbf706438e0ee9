"""Loader throughput vs a plain decode loop over the same MDS shards (one run), time to first
batch, and the sample rate a 7B stage-2 run on 8 H100s needs.

  python benchmarks/bench_data.py [--samples 2000] [--image-size 448] [--workers 2]

Assumption for the requirement row: training FLOPs = 6 * N * tokens, N = 7.6e9 (Qwen2.5-7B +
ViT, rounded), 40% MFU of 989 TFLOP/s bf16 per H100, tokens per sample = 1 + 256 visual +
~64 text + 1 (448 px, 2x2 merge); the loader must deliver that many samples/s per GPU.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def write_source(out: Path, n: int, size: int) -> Path:
    from streaming import MDSWriter

    from hydra_dist.data.schemas import SCHEMAS
    from hydra_dist.data.synthetic import make_sample
    from hydra_dist.data.transforms import encode_jpeg
    with MDSWriter(out=str(out), columns=SCHEMAS["image_caption"], size_limit="32mb") as w:
        for i in range(n):
            img, cap, _ = make_sample(i, 0, size)
            w.write({"id": i, "key": str(i), "image": encode_jpeg(img), "caption": cap,
                     "width": size, "height": size})
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


def loader_run(path: Path, size: int, n: int, mb: int, workers: int):
    from hydra_dist.data.collate import HydraCollator
    from hydra_dist.data.loader import StreamingBatches
    from hydra_dist.data.tokenizer import ByteTokenizer
    n_vis = ((size // 14) // 2) ** 2 if size % 14 == 0 else ((size // 16) // 2) ** 2
    col = HydraCollator(ByteTokenizer(), size, n_vis, 64, 0.5, 0)
    t0 = time.perf_counter()
    ld = StreamingBatches("", col, mb, 1, 1, True, 0, workers,
                          sources=[{"path": str(path), "task": "caption", "proportion": 1.0},
                                   {"path": str(path), "task": "generation", "proportion": 1.0}])
    next(ld)
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    steps = max(1, n // mb - 1)
    for _ in range(steps):
        next(ld)
    return first, steps * mb / (time.perf_counter() - t1)


def required_rate(tokens_per_sample: int, n_params=7.6e9, mfu=0.40, peak=989e12) -> float:
    return mfu * peak / (6 * n_params * tokens_per_sample)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--source-size", type=int, default=512, help="stored image side")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    from streaming.base.util import clean_stale_shared_memory
    clean_stale_shared_memory()
    with tempfile.TemporaryDirectory() as tmp:
        src = write_source(Path(tmp) / "mds", a.samples, a.source_size)
        plain = plain_loop(src, a.image_size, a.samples)
        first, rate = loader_run(src, a.image_size, a.samples, a.micro_batch, a.workers)
    need = required_rate(1 + 256 + 64 + 1)
    rows = [("plain decode loop (1 process)", f"{plain:,.0f} samples/s", "1.00"),
            (f"StreamingBatches ({a.workers} workers, collate)", f"{rate:,.0f} samples/s",
             f"{rate / plain:.2f}"),
            ("time to first batch", f"{first:.2f} s", ""),
            ("needed per GPU: 7B stage 2, 8xH100 (see docstring)", f"{need:,.1f} samples/s",
             f"{rate / need:.1f}x headroom")]
    w = max(len(r[0]) for r in rows)
    print(f"{a.samples} samples, stored {a.source_size}px JPEG -> {a.image_size}px, "
          f"micro-batch {a.micro_batch}")
    print(f"{'measure':<{w}} | {'value':>18} | ratio")
    print("-" * (w + 30))
    for r in rows:
        print(f"{r[0]:<{w}} | {r[1]:>18} | {r[2]}")


if __name__ == "__main__":
    main()
