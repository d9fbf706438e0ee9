"""2 real processes (torchrun, gloo): DP ranks read disjoint samples, TP peers the same ones,
a resume with bad samples on one rank is exact on every rank, and a DP=2 state resumed on
DP=1 finishes the epoch with every sample exactly once."""
import json
from pathlib import Path

import pytest

from data_helpers import write_caption_mds, write_text_mds
from launch import run_torchrun

WORKER = Path(__file__).with_name("dist_data_worker.py")


@pytest.fixture
def srcs(tmp_path):
    bad = {0: "truncated", 4: "garbage", 5: "missing", 21: "type"}
    return (write_caption_mds(tmp_path / "img", 36, bad), write_text_mds(tmp_path / "txt", 12),
            bad)


def _run(tmp_path, srcs, mode):
    img, txt, _ = srcs
    res = run_torchrun(2, [str(img), str(txt), str(tmp_path), mode], timeout=300,
                       script=str(WORKER))
    assert res.returncode == 0, res.stdout[-4000:]
    return [json.loads((tmp_path / f"{mode}_rank{r}.json").read_text()) for r in (0, 1)]


def test_dp_disjoint_and_exact_resume(tmp_path, srcs):
    r0, r1 = _run(tmp_path, srcs, "dp")
    epoch = 48 // 8  # 48 samples per epoch, global batch 8 -> 6 steps
    a = {i for b in r0["full"][:epoch] for i in b}
    b = {i for b in r1["full"][:epoch] for i in b}
    assert not a & b  # disjoint: a refill may repeat a rank's own sample, never the peer's
    assert a | b == set(range(48)) - set(srcs[2])  # all good samples of the epoch seen
    for r in (r0, r1):
        assert r["resumed"] == r["full"]
        assert all(len(x) == 4 for x in r["full"])
    assert sum(r0["errors"].values()) + sum(r1["errors"].values()) == 2 * len(srcs[2])
    assert r0["errors_all"] == r1["errors_all"]
    assert sum(r0["errors_all"].values()) == 2 * len(srcs[2])  # two epochs read


def test_tp_peers_read_the_same_batches(tmp_path, srcs):
    r0, r1 = _run(tmp_path, srcs, "tp")
    assert r0["full"] == r1["full"] and r0["resumed"] == r0["full"]


def test_dp2_state_resumed_on_dp1_covers_the_epoch_once(tmp_path):
    """Issue 19: samples seen before a DP change (2 ranks, 3 steps) and after it (1 rank, the
    rest of the epoch) together are the epoch, each sample once."""
    from hydra_dist.data.loader import StreamingBatches
    img = write_caption_mds(tmp_path / "img", 48)   # no bad samples: the exact case
    txt = write_text_mds(tmp_path / "txt", 16)   # 64 in all: streaming pads no sample in
    r0, r1 = _run(tmp_path, (img, txt, {}), "elastic")
    before = [i for r in (r0, r1) for b in r["head"] for i in b]
    assert len(before) == 24 == len(set(before))
    sources = [{"path": str(img), "task": "auto", "proportion": 3.0},
               {"path": str(txt), "task": "text", "proportion": 1.0}]
    ld = StreamingBatches("", lambda s: s, 4, 1, 1, True, 7, 0, r0["state"], sources=sources,
                          image_size=8)
    after = [s["id"] for _ in range(10) for s in ld.next_samples()]   # 64 - 24 = 40 samples
    assert ld.epoch == 0
    assert sorted(before + after) == list(range(64))
    ld.next_samples()
    assert ld.epoch == 1   # and the epoch ends where it should
