"""Integrity of MDS data, end to end (docs/data.md section 5, docs/reliability.md).

Two layers, both xxh3-64 (xxhash: ~10 GB/s, a rounding error next to JPEG decoding):
- shard hashes: our writers ask MDSWriter for `hashes=[SHARD_HASH]`, so index.json carries each
  shard's digest. Streaming checks it when it downloads a shard from a remote; the reader turns
  a failure into a stop that names the shard (a local copy that failed is deleted first, or
  streaming would trust it on the next run).
- sample hashes: a `xxh3` column holds the digest of every other field of the row. Streaming
  never re-checks a shard that is already local, and a flipped byte inside a JPEG often still
  decodes (to a garbled image); the reader recomputes the digest and a mismatch makes the
  sample a bad sample like any other: skipped, counted per source, logged with the shard file.
A data set written without the column (by another tool, or before it existed) is read
unchecked; the reader logs that once per source.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import xxhash

SHARD_HASH = "xxh3_64"     # streaming's name for the algorithm in index.json
SAMPLE_HASH = "xxh3"       # the per-sample column (MDS type uint64)


class SampleHashError(ValueError):
    """A sample whose fields no longer match the digest written with them."""


def _field_bytes(value: Any) -> bytes:
    # A type tag keeps b"1" (bytes) and 1 (int) apart. The tags follow the Python value, which a
    # round trip through MDS preserves for the column types our writers use (bytes, str, int,
    # json); numpy integers come back from int columns.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"b" + bytes(value)
    if isinstance(value, str):
        return b"s" + value.encode("utf-8")
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        return b"j" + json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return b"i" + str(int(value)).encode("ascii")


def sample_digest(row: Mapping[str, Any]) -> int:
    """xxh3-64 of every field but the digest itself, in column-name order."""
    h = xxhash.xxh3_64()
    for name in sorted(row):
        if name == SAMPLE_HASH:
            continue
        data = _field_bytes(row[name])
        h.update(name.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.intdigest()


def with_digest(row: dict) -> dict:
    return {**row, SAMPLE_HASH: sample_digest(row)}


def hashed_columns(columns: Mapping[str, str]) -> dict:
    return {**columns, SAMPLE_HASH: "uint64"}


def check_sample(raw: Mapping[str, Any], where: str) -> bool:
    """True if the sample carries a digest and it matches; False if it carries none. Raises
    SampleHashError naming `where` (shard file and sample) on a mismatch."""
    if SAMPLE_HASH not in raw:
        return False
    stored, got = int(raw[SAMPLE_HASH]), sample_digest(raw)
    if stored != got:
        raise SampleHashError(f"{where}: content does not match its xxh3-64 (stored {stored:016x}, "
                              f"read {got:016x}): bytes changed after the data set was written")
    return True
