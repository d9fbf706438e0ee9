"""Parallel, deterministic conversion of an input corpus to MDS (see schemas.py).

Every unit (a chunk of records, a tar shard, a parquet row group) is written by one worker
into its own part folder `part-NNNNN/`; the parts' index files are then merged with
streaming's `merge_index` in unit order. Units do not depend on the worker count, so the
same input gives byte-identical shards for any number of workers. Records whose image does
not decode (or that lack a field) are left out and listed in `conversion_summary.json`.
Every row carries its xxh3 digest and every shard its xxh3_64 in index.json (integrity.py).

Atomic: everything is written into a temporary folder beside --out and swapped in only when
the conversion succeeded with at least one sample, so a bad input never destroys an earlier
good conversion; a failed or empty one raises ConversionError naming the file, record or
column.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import List

from .convert_inputs import (ConversionError, records, units_folder, units_llava, units_parquet, units_text,
                             units_webdataset)
from .integrity import SHARD_HASH, hashed_columns, with_digest
from .schemas import SCHEMA_OF_INPUT, SCHEMAS

SUMMARY = "conversion_summary.json"


@dataclass
class ConvertOptions:
    kind: str                      # folder | webdataset | parquet | text | llava
    inputs: List[str]
    out: str
    workers: int = 1
    images_root: str = ""          # folder / llava: where relative image paths start
    image_column: str = "image"    # parquet
    caption_column: str = "caption"
    text_field: str = "text"       # text JSONL
    chunk_size: int = 1000         # records per unit (folder, text, llava)
    max_side: int = 0              # > 0: shrink larger images to this longer side (re-encodes)
    reencode: bool = False         # always store JPEG (quality below)
    jpeg_quality: int = 90
    shard_size: str = "64mb"
    compression: str = ""          # e.g. "zstd"; empty: none
    progress: bool = True


def make_units(o: ConvertOptions) -> list:
    if o.kind == "folder":
        return units_folder(o.inputs, o.images_root, o.chunk_size)
    if o.kind == "webdataset":
        return units_webdataset(o.inputs)
    if o.kind == "parquet":
        return units_parquet(o.inputs, o.image_column, o.caption_column)
    if o.kind == "text":
        return units_text(o.inputs, o.text_field, o.chunk_size)
    if o.kind == "llava":
        return units_llava(o.inputs, o.images_root, o.chunk_size)
    raise ValueError(f"unknown input kind {o.kind!r} (folder, webdataset, parquet, text, llava)")


def _image_fields(data: bytes, o: ConvertOptions) -> dict:
    """Validate (fully decode) and optionally shrink / re-encode; raises on a bad image."""
    from .transforms import decode_image, encode_jpeg, limit_side
    img = decode_image(data)
    small = limit_side(img, o.max_side)
    if small is not img or o.reencode:
        data, img = encode_jpeg(small, o.jpeg_quality), small
    return {"image": data, "width": img.size[0], "height": img.size[1]}


def _row(schema: str, i: int, key: str, fields: dict, o: ConvertOptions) -> dict:
    if schema == "text":
        return {"id": i, "text": fields["text"]}
    if schema == "instruct":
        img = _image_fields(fields["image"], o)["image"] if fields["image"] else b""
        return {"id": i, "key": key, "image": img, "conversations": fields["conversations"]}
    return {"id": i, "key": key, "caption": fields["caption"], **_image_fields(fields["image"], o)}


def write_unit(args) -> dict:
    """Write one unit into out/part-NNNNN; returns counts and the skipped records."""
    from streaming import MDSWriter
    index, unit, o = args
    schema = SCHEMA_OF_INPUT[o.kind]
    part = Path(o.out) / f"part-{index:05d}"
    if part.exists():
        shutil.rmtree(part)
    skipped, written = [], 0
    with MDSWriter(out=str(part), columns=hashed_columns(SCHEMAS[schema]), size_limit=o.shard_size,
                   compression=o.compression or None, hashes=[SHARD_HASH]) as w:
        for rec in records(unit):
            i, key = rec[0], rec[1]
            if rec[2] is None:
                skipped.append({"id": i, "key": key, "reason": rec[3]})
                continue
            try:
                row = _row(schema, i, key, rec[2], o)
            except Exception as e:  # noqa: BLE001 - any decode failure skips the record
                skipped.append({"id": i, "key": key, "reason": f"{type(e).__name__}: {e}"})
                continue
            w.write(with_digest(row))
            written += 1
    return {"index": index, "written": written, "skipped": skipped}


def convert(o: ConvertOptions) -> dict:
    """Convert and merge; returns the summary (also written to out/conversion_summary.json).
    Raises ConversionError (earlier output untouched) on a bad input or an empty result."""
    out = Path(o.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.converting-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        summary = _convert_into(replace(o, out=str(tmp)), o)
        if summary["samples_written"] == 0:
            reasons = Counter(s["reason"] for s in summary["skipped"])
            top = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3))
            raise ConversionError(
                f"{o.kind} conversion of {', '.join(o.inputs)} wrote 0 samples "
                f"({summary['samples_skipped']} skipped{': ' + top if top else ', no records found'}); "
                f"{out} was left as it was")
        _swap_in(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace out by tmp with renames (same file system): the old output is moved aside first
    and removed only once the new one is in place."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)


def _convert_into(o: ConvertOptions, user: ConvertOptions) -> dict:
    from streaming.base.util import merge_index
    from tqdm import tqdm
    out = Path(o.out)
    units = make_units(o)
    jobs = [(i, u, o) for i, u in enumerate(units)]
    results = []
    bar = tqdm(total=len(jobs), desc=f"{o.kind} -> MDS", unit="part", disable=not o.progress)
    if o.workers > 1 and len(jobs) > 1:
        # spawn: workers must not inherit the parent's threads / open handles (fork + threads)
        with mp.get_context("spawn").Pool(min(o.workers, len(jobs))) as pool:
            for r in pool.imap_unordered(write_unit, jobs):
                results.append(r)
                bar.update(1)
                bar.set_postfix(samples=sum(x["written"] for x in results))
    else:
        for job in jobs:
            results.append(write_unit(job))
            bar.update(1)
            bar.set_postfix(samples=sum(x["written"] for x in results))
    bar.close()
    results.sort(key=lambda r: r["index"])
    parts = [str(out / f"part-{r['index']:05d}" / "index.json") for r in results]
    if parts:
        merge_index(parts, str(out), keep_local=True, download_timeout=60)
    else:
        (out / "index.json").write_text(json.dumps({"version": 2, "shards": []}))
    skipped = sorted((s for r in results for s in r["skipped"]), key=lambda s: s["id"])
    summary = {"input_kind": o.kind, "schema": SCHEMA_OF_INPUT[o.kind],
               "columns": hashed_columns(SCHEMAS[SCHEMA_OF_INPUT[o.kind]]), "units": len(units),
               "samples_written": sum(r["written"] for r in results),
               "samples_skipped": len(skipped), "skipped": skipped,
               "options": {k: v for k, v in asdict(user).items()
                           if k not in ("out", "workers", "progress")}}
    (out / SUMMARY).write_text(json.dumps(summary, indent=1, sort_keys=True))
    return summary
