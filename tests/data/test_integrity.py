"""Integrity of MDS data on read (hydra_dist/data/integrity.py): real flipped bytes in a
shard file. A flipped byte inside a JPEG usually still decodes (to a garbled image); the
per-sample digest catches it, the sample is skipped and counted, the message names the shard
file. A remote shard that fails its index.json hash after download stops the run, names the
shard and deletes the bad local copy."""
import logging
import os
from pathlib import Path

import pytest

from data_helpers import write_caption_mds
from hydra_dist.data.integrity import SampleHashError, check_sample, sample_digest, with_digest
from hydra_dist.data.loader import StreamingBatches
from hydra_dist.data.samples import ShardHashError
from hydra_dist.data.synthetic import make_sample, write_synthetic_mds
from hydra_dist.data.transforms import decode_image


def _batches(sources, mb=4, **kw):
    return StreamingBatches("", lambda s: s, mb, 1, 1, False, 0, 0, sources=sources,
                            image_size=16, **kw)


def _jpeg(i: int) -> bytes:
    import io
    buf = io.BytesIO()
    make_sample(i, 0, 32)[0].save(buf, format="JPEG")
    return buf.getvalue()


def flip_inside_jpegs(folder: Path, ids) -> dict:
    """Flip one byte in the middle of each listed sample's JPEG, in the shard file on disk.
    Returns {id: shard file}. The file keeps its size (the shard-size check cannot see it)."""
    where = {}
    for i in ids:
        jpeg = _jpeg(i)
        for shard in sorted(folder.glob("shard.*.mds")):
            data = bytearray(shard.read_bytes())
            at = data.find(jpeg)
            if at >= 0:
                data[at + len(jpeg) // 2] ^= 0x10
                shard.write_bytes(bytes(data))
                where[i] = shard
                break
    assert sorted(where) == sorted(ids)
    return where


def test_digest_covers_every_field_and_round_trips():
    row = {"id": 3, "image": b"\xff\xd8abc", "caption": "a red circle", "conv": [{"from": "gpt"}]}
    signed = with_digest(row)
    assert check_sample(signed, "x")
    for key, other in (("image", b"\xff\xd8abd"), ("caption", "a red circlf"), ("id", 4),
                       ("conv", [{"from": "human"}])):
        with pytest.raises(SampleHashError, match="x: content does not match"):
            check_sample({**signed, key: other}, "x")
    assert not check_sample(row, "x")  # no digest column: unchecked, not refused
    assert sample_digest({"a": b"1"}) != sample_digest({"a": 1}) != sample_digest({"a": "1"})


def test_flipped_jpeg_bytes_are_skipped_counted_and_named(tmp_path, caplog):
    data = write_synthetic_mds(tmp_path / "mds", num_samples=40, seed=0, image_size=32,
                               size_limit="16kb")
    flipped = [2, 9, 17, 30]
    where = flip_inside_jpegs(data, flipped)
    # the point of the digest: these images still decode (garbled) and would be trained on
    decodable = 0
    for i in flipped:
        blob = where[i].read_bytes()
        j = _jpeg(i)
        start = blob.find(j[: len(j) // 2])
        try:
            decode_image(blob[start:start + len(j)])
            decodable += 1
        except OSError:
            pass
    assert decodable >= 2, decodable
    ld = _batches([{"path": str(data), "task": "caption", "name": "shapes"}])
    with caplog.at_level(logging.WARNING, logger="hydra_dist"):
        seen = [s["id"] for _ in range(9) for s in ld.next_samples()]
    assert set(seen) == set(range(40)) - set(flipped)  # every good sample once, no bad one
    assert ld.error_counts() == {"shapes": len(flipped)}
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for i in flipped:
        assert f"{where[i]} sample {i}: content does not match its xxh3-64" in logged
    assert "no per-sample xxh3 column" not in logged


def test_data_set_without_digests_is_read_and_says_so(tmp_path, caplog):
    data = write_caption_mds(tmp_path / "plain", 8)
    with caplog.at_level(logging.WARNING, logger="hydra_dist"):
        ld = _batches([{"path": str(data), "task": "caption", "name": "plain"}])
        got = [s["id"] for _ in range(2) for s in ld.next_samples()]
    assert sorted(got) == list(range(8))
    assert "plain has no per-sample xxh3 column" in caplog.text


def test_remote_shard_failing_its_hash_stops_and_deletes_the_copy(tmp_path):
    remote = write_synthetic_mds(tmp_path / "remote", num_samples=24, seed=0, image_size=32,
                                 size_limit="16kb")
    shard = flip_inside_jpegs(remote, [5])[5]
    cache = tmp_path / "cache"
    ld = _batches([{"remote": str(remote), "task": "caption", "name": "r"}], cache_dir=str(cache))
    with pytest.raises(ShardHashError, match=rf"{shard.name} of {remote} does not match the xxh3_64 in "
                                             rf"{remote}/index.json after download"):
        for _ in range(6):
            ld.next_samples()
    assert not [p for p in cache.rglob(shard.name) if p.is_file() and not os.path.islink(p)]
