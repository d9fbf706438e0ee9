"""What the checkpoint checksums cost: xxh3-64 of every file (checkpoint.manager.file_hash, as
the save and the resume check run it) against torch.save / torch.load of the same files, in one
run on this machine. Prints the hash time as a share of the save and of the load.

  python benchmarks/bench_checksum.py [--mb 512] [--files 4] [--dir /tmp]
Each rank hashes ~1/world of a checkpoint (checkpoint.manager.hash_files), so on N ranks the
share per rank is about the printed one; it is an upper bound where the files are still in the
page cache after the save (they are here)."""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from hydra_dist.checkpoint.manager import file_hash


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=512, help="total size of the state")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args(argv)
    per = a.mb * 2 ** 20 // 4 // a.files
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        paths = [Path(d) / f"shard{i}.pt" for i in range(a.files)]
        states = [{"w": torch.randn(per)} for _ in paths]
        t0 = time.perf_counter()
        for p, st in zip(paths, states):
            torch.save(st, p)
        save = time.perf_counter() - t0
        t0 = time.perf_counter()
        for p in paths:
            file_hash(p)
        hashing = time.perf_counter() - t0
        t0 = time.perf_counter()
        for p in paths:
            torch.load(p, weights_only=True)
        load = time.perf_counter() - t0
    gb = a.mb / 1024
    print(f"state {a.mb} MiB in {a.files} files")
    print("| operation | seconds | GiB/s |")
    print("| --- | --- | --- |")
    for name, t in (("torch.save", save), ("xxh3-64 (file_hash)", hashing), ("torch.load", load)):
        print(f"| {name} | {t:.3f} | {gb / t:.2f} |")
    print(f"hash / save = {hashing / save:.3f}   hash / load = {hashing / load:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
