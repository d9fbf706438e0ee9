"""The manifest of a checkpoint folder: every file with its size and xxh3-64, written last by
checkpoint/manager.py and checked on resume and before an export or generation reads the folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

MANIFEST = "manifest.json"


def file_hash(path: Path) -> str:
    """xxh3-64 of a file (hex): ~10 GB/s from the page cache, so hashing stays a small share of
    a save (benchmarks/bench_checksum.py prints the share)."""
    import xxhash
    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, hashes: Dict[str, str]) -> None:
    files = {str(p.relative_to(folder)): p.stat().st_size
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    # what rank 0 wrote after the shared hashing (small files) is hashed here
    digests = {rel: hashes.get(rel) or file_hash(folder / rel) for rel in files}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": files, "xxh3_64": digests}, indent=1))
    tmp.replace(folder / MANIFEST)


def verify(folder: Path, share: tuple[int, int] = (0, 1)) -> Optional[str]:
    """None if the checkpoint is complete and intact, else what is wrong. Sizes of every file,
    and the xxh3-64 of the files in this rank's share (rank, world) of the sorted list
    (checkpoints written before checksums have sizes only)."""
    mf = folder / MANIFEST
    if not mf.is_file():
        return f"{folder}: no {MANIFEST} (incomplete save)"
    manifest = json.loads(mf.read_text())
    for rel, size in manifest["files"].items():
        p = folder / rel
        if not p.is_file():
            return f"{folder}: missing {rel}"
        if p.stat().st_size != size:
            return f"{folder}: {rel} has {p.stat().st_size} bytes, manifest says {size}"
    if "xxh3_64" in manifest:
        rank, world = share
        for rel in sorted(manifest["files"])[rank::world]:
            got = file_hash(folder / rel)
            if got != manifest["xxh3_64"][rel]:
                return (f"{folder}: {rel} is corrupt (xxh3-64 {got}, manifest says "
                        f"{manifest['xxh3_64'][rel]}; size unchanged)")
    return None
