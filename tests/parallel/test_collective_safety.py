"""A rank whose micro-batch has no image still runs the vision path: ZeRO-3 finishes (a hang
fails on the timeout) with the same result as an explicit zero-weighted image."""
from pathlib import Path

import pytest
import torch

from launch import run_torchrun

WORKER = Path(__file__).with_name("collective_worker.py")


def run(tmp_path, mode):
    out = tmp_path / f"{mode}.pt"
    res = run_torchrun(2, [str(out), mode], script=WORKER, timeout=240)
    assert res.returncode == 0, res.stdout[-5000:]
    return torch.load(out, weights_only=True)["trajectory"]


def test_text_only_rank_does_not_hang_and_matches_explicit_dummy(tmp_path):
    auto, explicit = run(tmp_path, "auto"), run(tmp_path, "explicit")
    assert len(auto) == 3
    assert auto == pytest.approx(explicit, rel=1e-6, abs=1e-7)
