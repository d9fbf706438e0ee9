"""Input enumeration for `hydra-prepare-data`: each input kind becomes a sorted list of units
(picklable tuples a worker turns into one MDS part) and each unit yields records.

A record is (id, key, fields) where fields hold the raw, unvalidated values; `None` in place
of fields means "skip" and the key's reason is the second element: (id, key, None, reason).
Units never depend on the worker count, so the output is the same for any --workers.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

from .samples import conversation_messages

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")


class ConversionError(ValueError):
    """A bad input that stops the whole conversion (the earlier output is left as it was)."""
TAR_ID_STRIDE = 10_000_000  # webdataset ids: tar index * stride + position in the tar


def _files(inputs: Sequence[str], patterns: Tuple[str, ...]) -> List[Path]:
    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for pat in patterns:
                out += [f for f in p.rglob(pat) if f.is_file()]
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"input {item} does not exist")
    return sorted(set(out))


def _chunks(items: list, size: int, kind: str, extra) -> list:
    return [(kind, items[i:i + size], extra) for i in range(0, len(items), size)]


def _jsonl(path: Path) -> Iterator[Tuple[int, object]]:
    with path.open("r", encoding="utf-8") as f:
        for n, line in enumerate(f):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    # a bad line is one skipped record, named by file and 1-based line
                    yield n, f"{path}: line {n + 1}: JSON syntax error: {e.msg}"


def units_folder(inputs, images_root: str, chunk: int) -> list:
    """(a) captions JSONL ({"image"|"file_name": rel path, "caption"|"text": str}) + images, or
    an image folder with the caption beside each image in a side file (`a.jpg` + `a.txt`, or
    `a.json` holding "caption"/"text"), as users' folders usually are."""
    rows = []
    for cap_file in _files(inputs, ("*.jsonl",)):
        root = Path(images_root) if images_root else cap_file.parent
        for n, obj in _jsonl(cap_file):
            if isinstance(obj, dict):
                rel = obj.get("image") or obj.get("file_name") or obj.get("path")
                cap = obj.get("caption", obj.get("text"))
                if isinstance(rel, str):
                    rows.append((rel, str(root / rel), cap))
                    continue
            rows.append((f"{cap_file.name}:{n}", "", f"bad caption line: {obj!r}"[:200]))
    for item in inputs:
        d = Path(item)
        if d.is_dir() and not any(d.rglob("*.jsonl")):
            rows += _side_file_rows(d)
    rows.sort(key=lambda r: r[0])
    items = [(i, *r) for i, r in enumerate(rows)]
    return _chunks(items, chunk, "folder", None)


def _side_caption(img: Path):
    """The caption of an image from its side file, or (None, reason)."""
    txt, js = img.with_suffix(".txt"), img.with_suffix(".json")
    if txt.is_file():
        return txt.read_text(encoding="utf-8", errors="replace").strip(), ""
    if js.is_file():
        try:
            meta = json.loads(js.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            return None, f"{js}: line {e.lineno}: {e.msg}"
        cap = meta.get("caption", meta.get("text")) if isinstance(meta, dict) else None
        return (cap, "") if isinstance(cap, str) else (None, f"{js}: no string caption/text")
    return None, f"no caption side file {txt.name} or {js.name}"


def _side_file_rows(folder: Path) -> list:
    rows = []
    for img in sorted(f for f in folder.rglob("*") if f.is_file()
                      and f.suffix.lower().lstrip(".") in IMAGE_EXTS):
        rel = str(img.relative_to(folder))
        cap, why = _side_caption(img)
        rows.append((rel, str(img), cap) if cap is not None else (rel, "", why))
    return rows


def units_webdataset(inputs) -> list:
    """(b) one unit per tar shard, in sorted order."""
    return [("webdataset", str(t), i) for i, t in enumerate(_files(inputs, ("*.tar",)))]


def units_parquet(inputs, image_col: str, caption_col: str) -> list:
    """(c) one unit per parquet row group; ids are global row numbers."""
    import pyarrow.parquet as pq
    units, base = [], 0
    for f in _files(inputs, ("*.parquet",)):
        pf = pq.ParquetFile(str(f))
        names = pf.schema_arrow.names
        for flag, col in (("--image-column", image_col), ("--caption-column", caption_col)):
            if col not in names:
                raise ConversionError(f"{f}: no column {col!r} ({flag}); its columns are "
                                      f"{', '.join(names)}")
        meta = pf.metadata
        for g in range(meta.num_row_groups):
            units.append(("parquet", (str(f), g, base), (image_col, caption_col)))
            base += meta.row_group(g).num_rows
    return units


def units_text(inputs, field: str, chunk: int) -> list:
    """(d) plain-text JSONL; ids are global line numbers over the sorted files."""
    items, i = [], 0
    for f in _files(inputs, ("*.jsonl",)):
        for n, obj in _jsonl(f):
            items.append((i, f"{f.name}:{n}", obj))
            i += 1
    return _chunks(items, chunk, "text", field)


def units_llava(inputs, images_root: str, chunk: int) -> list:
    """(e) LLaVA JSON lists ({"id", "image"?, "conversations": [...]}), sorted files."""
    items, i = [], 0
    for f in _files(inputs, ("*.json",)):
        root = Path(images_root) if images_root else f.parent
        try:
            recs = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConversionError(f"{f}: JSON syntax error at line {e.lineno} column {e.colno}: "
                                  f"{e.msg}") from None
        if not isinstance(recs, list):
            raise ConversionError(f"{f}: a LLaVA file is a JSON list of records "
                                  f"({{\"id\", \"image\"?, \"conversations\"}}), this one holds a "
                                  f"{type(recs).__name__}" + (f" with keys {sorted(recs)[:8]}"
                                                              if isinstance(recs, dict) else ""))
        for n, rec in enumerate(recs):
            items.append((i, f"{f.name}:{n}", rec, str(root)))
            i += 1
    return _chunks(items, chunk, "llava", None)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def records(unit) -> Iterator[tuple]:
    """(id, key, fields) or (id, key, None, reason) for every record of a unit."""
    kind, payload, extra = unit
    if kind == "folder":
        for i, key, path, cap in payload:
            if not path:
                yield i, key, None, cap
            elif not isinstance(cap, str):
                yield i, key, None, f"caption is {type(cap).__name__}, not str"
            else:
                try:
                    yield i, key, {"image": _read(path), "caption": cap}
                except OSError as e:
                    yield i, key, None, f"cannot read image: {e}"
    elif kind == "webdataset":
        yield from _tar_records(payload, extra)
    elif kind == "parquet":
        yield from _parquet_records(*payload, *extra)
    elif kind == "text":
        for i, key, obj in payload:
            txt = obj.get(extra) if isinstance(obj, dict) else None
            if isinstance(txt, str):
                yield i, key, {"text": txt}
            else:
                yield i, key, None, f"no string field {extra!r}: {str(obj)[:120]}"
    elif kind == "llava":
        for i, key, rec, root in payload:
            yield (i, *_llava_record(key, rec, root))
    else:
        raise ValueError(f"unknown unit kind {kind}")


def _llava_record(key, rec, root):
    if not isinstance(rec, dict):
        return key, None, f"record is {type(rec).__name__}, not an object"
    key = str(rec.get("id", key))  # the record's own id names it in the summary
    try:  # the reader's own rules (samples.conversation_messages), so nothing passes here to fail there
        conversation_messages(rec.get("conversations"))
    except ValueError as e:
        return key, None, str(e)
    image = b""
    if rec.get("image"):
        try:
            image = _read(str(Path(root) / rec["image"]))
        except OSError as e:
            return key, None, f"cannot read image: {e}"
    return key, {"image": image, "conversations": rec["conversations"]}


def _tar_records(tar_path: str, tar_idx: int):
    groups: dict = {}
    with tarfile.open(tar_path) as tf:
        for m in tf.getmembers():
            if not m.isfile():
                continue
            d, _, base = m.name.rpartition("/")
            stem, dot, ext = base.partition(".")
            if not dot:
                continue
            key = f"{d}/{stem}" if d else stem
            groups.setdefault(key, {})[ext.lower()] = tf.extractfile(m).read()
    name = Path(tar_path).name
    for pos, key in enumerate(sorted(groups)):
        files, i, k = groups[key], tar_idx * TAR_ID_STRIDE + pos, f"{name}/{key}"
        img = next((files[e] for e in IMAGE_EXTS if e in files), None)
        cap = files["txt"].decode("utf-8", "replace") if "txt" in files else None
        if cap is None and "json" in files:
            try:
                meta = json.loads(files["json"])
                cap = meta.get("caption", meta.get("text")) if isinstance(meta, dict) else None
            except json.JSONDecodeError:
                cap = None
        if img is None:
            yield i, k, None, "no image file in the sample"
        elif not isinstance(cap, str):
            yield i, k, None, "no caption (.txt or .json caption/text)"
        else:
            yield i, k, {"image": img, "caption": cap}


def _parquet_records(path: str, group: int, base: int, image_col: str, caption_col: str):
    import pyarrow.parquet as pq
    table = pq.ParquetFile(path).read_row_group(group, columns=[image_col, caption_col])
    images, caps = table.column(image_col).to_pylist(), table.column(caption_col).to_pylist()
    name = Path(path).name
    for r, (img, cap) in enumerate(zip(images, caps)):
        i, key = base + r, f"{name}:{base + r}"
        if isinstance(img, dict):  # Hugging Face datasets: {"bytes": ..., "path": ...}
            img = img.get("bytes")
        if not isinstance(img, (bytes, bytearray)):
            yield i, key, None, f"image column holds {type(img).__name__}, not bytes"
        elif not isinstance(cap, str):
            yield i, key, None, f"caption column holds {type(cap).__name__}, not str"
        else:
            yield i, key, {"image": bytes(img), "caption": cap}
