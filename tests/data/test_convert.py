"""hydra-prepare-data: every input kind, bad images in the summary, resize, determinism."""
import io
import json
import tarfile

import pytest
from PIL import Image

from data_helpers import jpeg_bytes, truncated_jpeg

from hydra_dist.data.integrity import SHARD_HASH, check_sample, hashed_columns
from hydra_dist.cli.prepare_data import main as cli_main
from hydra_dist.data.convert import SUMMARY, ConvertOptions, convert
from hydra_dist.data.schemas import SCHEMAS


def read_all(path):
    from streaming import StreamingDataset
    ds = StreamingDataset(local=str(path), shuffle=False, batch_size=1)
    return [ds[i] for i in range(len(ds))]


def files_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_folder_captions_bad_image_resize_and_worker_determinism(tmp_path):
    src = tmp_path / "src"
    (src / "imgs").mkdir(parents=True)
    lines = []
    for i in range(7):
        data = truncated_jpeg(i) if i == 3 else jpeg_bytes(i, size=(80, 40))
        (src / "imgs" / f"{i:02d}.jpg").write_bytes(data)
        lines.append(json.dumps({"image": f"imgs/{i:02d}.jpg", "caption": f"cap {i}"}))
    lines.append(json.dumps({"image": "imgs/missing.jpg", "caption": "gone"}))
    (src / "caps.jsonl").write_text("\n".join(reversed(lines)) + "\n")  # unsorted on purpose
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        code = cli_main(["folder", str(src / "caps.jsonl"), "--out", str(out), "--workers",
                         str(workers), "--chunk-size", "3", "--max-side", "32", "--no-progress"])
        assert code == 0
        outs.append(out)
    assert files_bytes(outs[0]) == files_bytes(outs[1])  # same bytes for any worker count
    rows = read_all(outs[0])
    assert [r["key"] for r in rows] == [f"imgs/{i:02d}.jpg" for i in range(7) if i != 3]
    assert [r["caption"] for r in rows] == [f"cap {i}" for i in range(7) if i != 3]
    for r in rows:
        img = Image.open(io.BytesIO(r["image"]))
        assert img.size == (32, 16) == (r["width"], r["height"])
    summary = json.loads((outs[0] / SUMMARY).read_text())
    reasons = {s["key"]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"imgs/03.jpg", "imgs/missing.jpg"}
    assert "truncated" in reasons["imgs/03.jpg"] or "OSError" in reasons["imgs/03.jpg"]
    assert summary["samples_written"] == 6
    assert summary["columns"] == hashed_columns(SCHEMAS["image_caption"])
    # every row carries its digest, every shard its hash in index.json (data/integrity.py)
    assert all(check_sample(r, f"row {r['id']}") for r in rows)
    shards = json.loads((outs[0] / "index.json").read_text())["shards"]
    assert shards and all(SHARD_HASH in sh["raw_data"]["hashes"] for sh in shards)


def _tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_webdataset_tars(tmp_path):
    src = tmp_path / "wds"
    src.mkdir()
    _tar(src / "b-000001.tar", [("x/0001.jpg", jpeg_bytes(1)), ("x/0001.txt", b"one"),
                                ("x/0002.png", jpeg_bytes(2, fmt="PNG")),
                                ("x/0002.json", json.dumps({"caption": "two"}).encode()),
                                ("x/0003.jpg", jpeg_bytes(3))])  # no caption
    _tar(src / "a-000000.tar", [("0000.jpg", truncated_jpeg(0)), ("0000.txt", b"bad"),
                                ("0005.jpg", jpeg_bytes(5)), ("0005.txt", b"five")])
    s = convert(ConvertOptions(kind="webdataset", inputs=[str(src)], out=str(tmp_path / "o"),
                               progress=False, reencode=True))
    rows = read_all(tmp_path / "o")
    assert [(r["key"], r["caption"]) for r in rows] == [
        ("a-000000.tar/0005", "five"), ("b-000001.tar/x/0001", "one"), ("b-000001.tar/x/0002", "two")]
    assert all(Image.open(io.BytesIO(r["image"])).format == "JPEG" for r in rows)
    assert rows[0]["id"] == 1 and rows[1]["id"] == 10_000_000
    assert {x["key"] for x in s["skipped"]} == {"a-000000.tar/0000", "b-000001.tar/x/0003"}


def test_parquet_bytes_and_hf_struct(tmp_path):
    import pyarrow as pa  # parquet input is supported: a missing pyarrow must fail, not skip
    import pyarrow.parquet as pq
    src = tmp_path / "pq"
    src.mkdir()
    t1 = pa.table({"img": [jpeg_bytes(i) for i in range(5)] + [b"junk"],
                   "text": [f"p{i}" for i in range(5)] + ["x"]})
    pq.write_table(t1, src / "a.parquet", row_group_size=4)
    t2 = pa.table({"img": [{"bytes": jpeg_bytes(9), "path": "9.jpg"}], "text": [None]})
    t3 = pa.table({"img": [{"bytes": jpeg_bytes(8), "path": "8.jpg"}], "text": ["p8"]})
    pq.write_table(t2, src / "b.parquet")
    pq.write_table(t3, src / "c.parquet")
    s = convert(ConvertOptions(kind="parquet", inputs=[str(src)], out=str(tmp_path / "o"),
                               image_column="img", caption_column="text", progress=False))
    rows = read_all(tmp_path / "o")
    assert [r["caption"] for r in rows] == ["p0", "p1", "p2", "p3", "p4", "p8"]
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4, 7]
    assert [x["id"] for x in s["skipped"]] == [5, 6]
    assert s["units"] == 4  # row groups: 2 + 1 + 1


def test_text_jsonl(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "hello"}\nnot json\n{"other": 1}\n{"text": "bye"}\n')
    s = convert(ConvertOptions(kind="text", inputs=[str(tmp_path / "t.jsonl")],
                               out=str(tmp_path / "o"), progress=False, chunk_size=2))
    rows = read_all(tmp_path / "o")
    assert [(r["id"], r["text"]) for r in rows] == [(0, "hello"), (3, "bye")]
    assert s["samples_skipped"] == 2


def test_llava_with_and_without_images(tmp_path):
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "a.jpg").write_bytes(jpeg_bytes(1))
    (tmp_path / "coco" / "bad.jpg").write_bytes(truncated_jpeg(2))
    recs = [{"id": "r1", "image": "a.jpg", "conversations": [
                {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A box."}]},
            {"id": "r2", "conversations": [{"from": "human", "value": "Hi"},
                                           {"from": "gpt", "value": "Hello."}]},
            {"id": "r3", "image": "bad.jpg", "conversations": [{"from": "human", "value": "?"}]},
            {"id": "r4", "conversations": "oops"}]
    (tmp_path / "llava.json").write_text(json.dumps(recs))
    s = convert(ConvertOptions(kind="llava", inputs=[str(tmp_path / "llava.json")],
                               images_root=str(tmp_path / "coco"), out=str(tmp_path / "o"),
                               progress=False))
    rows = read_all(tmp_path / "o")
    assert [r["key"] for r in rows] == ["r1", "r2"]
    assert len(rows[0]["image"]) > 0 and rows[1]["image"] == b""
    assert rows[0]["conversations"][1]["value"] == "A box."
    assert {x["key"] for x in s["skipped"]} == {"r3", "r4"}  # bad records named by their id
