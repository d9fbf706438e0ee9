"""What the per-sample MDS digest costs (hydra_dist/data/integrity.py): the reader's check of
each row (xxh3-64 over every field) against the decode + resize it already does for the same
row, in one run on this machine. Prints the check as a share of the decode.

  python benchmarks/bench_sample_hash.py [--n 200] [--size 448] [--stored 512]
Rows are JPEGs of natural-ish content stored at --stored px and resized to --size, as a
stage-2 row is; the share is what the loader workers spend on integrity."""
import argparse
import io
import time

import numpy as np
from PIL import Image

from hydra_dist.data.integrity import check_sample, with_digest
from hydra_dist.data.transforms import decode_image, resize_center_crop


def make_rows(n: int, stored: int) -> list:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        # smooth noise compresses like a photo, not like a flat test pattern
        small = rng.integers(0, 256, (stored // 16, stored // 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((stored, stored), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        rows.append(with_digest({"id": i, "key": f"img{i}.jpg", "image": buf.getvalue(),
                                 "caption": f"a photo number {i} " * 4, "width": stored,
                                 "height": stored}))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--stored", type=int, default=512)
    a = ap.parse_args(argv)
    rows = make_rows(a.n, a.stored)
    t0 = time.perf_counter()
    for r in rows:
        check_sample(r, "bench")
    check = time.perf_counter() - t0
    t0 = time.perf_counter()
    for r in rows:
        resize_center_crop(decode_image(r["image"]), a.size)
    decode = time.perf_counter() - t0
    kb = sum(len(r["image"]) for r in rows) / len(rows) / 1024
    print(f"{a.n} rows, JPEG {a.stored} px ({kb:.0f} KiB each) -> {a.size} px")
    print("| per row | microseconds |")
    print("| --- | --- |")
    print(f"| xxh3-64 check (check_sample) | {check / a.n * 1e6:.1f} |")
    print(f"| decode + resize + crop | {decode / a.n * 1e6:.1f} |")
    print(f"check / decode = {check / decode:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
