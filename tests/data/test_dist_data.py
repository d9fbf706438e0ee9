"""2 real processes (torchrun, gloo): DP ranks read disjoint samples, TP peers the same ones,
and a resume with bad samples on one rank is exact on every rank."""
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
