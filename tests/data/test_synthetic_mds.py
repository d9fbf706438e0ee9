"""Synthetic shapes set -> MDS shards -> mosaicml-streaming -> training batches."""
import numpy as np
import pytest
import torch

from hydra_dist.data.collate import IGNORE, HydraCollator, image_to_tensor
from hydra_dist.data.synthetic import COLORS, make_sample, write_synthetic_mds
from hydra_dist.data.tokenizer import ByteTokenizer
from hydra_dist.data.transforms import decode_image
from hydra_dist.models.vit import model_pixels


@pytest.fixture
def mds(tmp_path):
    return write_synthetic_mds(tmp_path / "mds", num_samples=40, seed=7, image_size=32)


def _dataset(path, **kw):
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory
    clean_stale_shared_memory()
    return StreamingDataset(local=str(path), batch_size=4, **kw)


def test_round_trip(mds):
    ds = _dataset(mds, shuffle=False)
    assert len(ds) == 40
    for i in (0, 17, 39):
        s = ds[i]
        img, caption, attrs = make_sample(i, 7, 32)
        assert s["id"] == i and s["caption"] == caption
        # JPEG is lossy: the dominant colour must survive, not every pixel
        got = np.asarray(decode_image(s["image"]), dtype=np.float32)
        want = np.asarray(img, dtype=np.float32)
        assert np.abs(got - want).mean() < 12
        corner = got[:3, :3].reshape(-1, 3).mean(0)
        assert np.abs(corner - np.array(COLORS[attrs["bg"]])).max() < 30


def test_write_is_deterministic_and_reused(tmp_path):
    a = write_synthetic_mds(tmp_path / "a", 12, 3, 32)
    b = write_synthetic_mds(tmp_path / "b", 12, 3, 32)
    shard_a = sorted(p.read_bytes() for p in a.glob("*.mds"))
    shard_b = sorted(p.read_bytes() for p in b.glob("*.mds"))
    assert shard_a == shard_b
    mtime = (a / "index.json").stat().st_mtime_ns
    write_synthetic_mds(tmp_path / "a", 12, 3, 32)
    assert (a / "index.json").stat().st_mtime_ns == mtime


def test_collated_batch_layout(mds):
    ds = _dataset(mds, shuffle=False)
    tok = ByteTokenizer()
    col = HydraCollator(tok, image_size=32, n_vis=16, max_text=48, generation_fraction=0.5, seed=1)
    batch = col([{**ds[i], "image": decode_image(ds[i]["image"])} for i in range(8)])
    assert batch["images"].shape == (8, 3, 32, 32) and batch["images"].dtype == torch.uint8
    # the model's conversion gives, bit for bit, the per-image float conversion eval uses
    unit = model_pixels(batch["images"], torch.float32)
    per_image = torch.stack([image_to_tensor(decode_image(ds[i]["image"]), 32) for i in range(8)])
    assert torch.equal(unit, per_image) and unit.min() >= -1 and unit.max() <= 1
    assert model_pixels(per_image, torch.bfloat16).dtype == torch.bfloat16   # float passes through
    assert batch["is_gen"].any() and (~batch["is_gen"]).any()
    for b in range(8):
        vis = batch["visual_index"][b] % batch["input_ids"].shape[1]
        assert (batch["input_ids"][b, vis] == tok.IMG).all()
        assert (batch["image_ids"][b, vis] == 1).all()
        labels = batch["labels"][b]
        if batch["is_gen"][b]:
            assert (labels == IGNORE).all()
        else:
            # the caption's bytes are the targets, shifted by one position
            ids, lab = batch["input_ids"][b], labels
            n = int((lab != IGNORE).sum())
            first = int(torch.nonzero(lab != IGNORE)[0])
            assert torch.equal(lab[first:first + n], ids[first + 1:first + 1 + n])
            assert tok.decode(lab[first:first + n].tolist()).startswith("a ")
