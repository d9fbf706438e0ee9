"""Exact resume at the loader level: mid-epoch, across an epoch boundary, with a mixture and
with bad samples (the FIFO refill is rebuilt by replay)."""
import json

import pytest

from data_helpers import write_caption_mds, write_text_mds
from hydra_dist.data.loader import StreamingBatches


def make(sources, state=None, mb=4, workers=0):
    return StreamingBatches("", lambda s: s, mb, 1, 1, True, 11, workers, state,
                            sources=sources, image_size=8)


def ids(loader, n):
    return [[(s["id"], s.get("task")) for s in loader.next_samples()] for _ in range(n)]


@pytest.fixture
def mixture(tmp_path):
    bad = {1: "truncated", 6: "missing", 7: "type", 15: "garbage", 16: "garbage"}
    img = write_caption_mds(tmp_path / "img", 30, bad)
    txt = write_text_mds(tmp_path / "txt", 10)
    return [{"path": str(img), "task": "caption", "proportion": 1.0},
            {"path": str(img), "task": "generation", "proportion": 2.0},
            {"path": str(txt), "task": "text", "proportion": 1.0}]


@pytest.mark.parametrize("stop", [3, 9, 17, 19])  # mid-epoch 0, mid-epoch 1, in the owed tail
def test_exact_resume_with_mixture_and_bad_samples(mixture, stop):
    total = 26  # epoch = 70 samples -> 17 raw batches of 4: crosses two epoch boundaries
    full = ids(make(mixture), total)
    a = make(mixture)
    head = ids(a, stop)
    state = json.loads(json.dumps(a.state_dict()))  # must survive trainer_state.json
    errors = a.error_counts()
    b = make(mixture, state)
    assert b.error_counts() == errors  # counts carry over
    tail = ids(b, total - stop)
    assert head + tail == full
    assert sum(b.error_counts().values()) > sum(errors.values()) or stop >= 17


def test_every_batch_full_and_epochs_aligned(mixture):
    ld = make(mixture)
    epochs = []
    for _ in range(40):
        assert len(ld.next_samples()) == 4
        epochs.append(ld.epoch)
    # 70 samples per epoch -> 17 batches per epoch whatever the bad samples
    assert epochs[:17] == [0] * 17 and epochs[17:34] == [1] * 17
    bad_per_epoch = sum(ld.error_counts().values())
    assert bad_per_epoch > 0


def test_resume_with_dataloader_workers(tmp_path):
    img = write_caption_mds(tmp_path / "img", 40, {3: "garbage"})
    src = [{"path": str(img), "task": "auto"}]
    full = ids(make(src, workers=2), 14)
    a = make(src, workers=2)
    head = ids(a, 6)
    b = make(src, json.loads(json.dumps(a.state_dict())), workers=2)
    assert head + ids(b, 8) == full
