"""HYDRA-TOK under TP=2 and ZeRO-3 over DP=2 matches one process (real gloo groups)."""
from pathlib import Path

import pytest
import torch

from launch import run_torchrun

WORKER = Path(__file__).with_name("tokenizer_equivalence_worker.py")


def run(tmp_path, name, nproc, tp, zero):
    out = tmp_path / f"{name}.pt"
    res = run_torchrun(nproc, [str(out), str(tp), str(zero), "4"], script=WORKER, timeout=300)
    assert res.returncode == 0, res.stdout[-5000:]
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return run(tmp_path_factory.mktemp("tokref"), "ref", 1, 1, 0)


def assert_same(ref, got):
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5, abs=1e-6)
    for k, v in ref["parts"].items():
        assert got["parts"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert ref["grads"].keys() == got["grads"].keys()
    for n, g in ref["grads"].items():
        torch.testing.assert_close(got["grads"][n], g, rtol=1e-4, atol=2e-5, msg=n)
    assert got["trajectory"] == pytest.approx(ref["trajectory"], rel=1e-4, abs=1e-5)


def test_tokenizer_reference_trains(reference):
    assert reference["trajectory"][-1] < reference["trajectory"][0]
    assert {"fm", "reg", "dist"} <= set(reference["parts"])


def test_tokenizer_tp2_equals_tp1(reference, tmp_path):
    assert_same(reference, run(tmp_path, "tp2", 2, 2, 0))


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_tokenizer_zero_dp2_equals_single_process(reference, tmp_path, zero):
    assert_same(reference, run(tmp_path, f"z{zero}", 2, 1, zero))


@pytest.mark.slow
def test_tokenizer_tp2_dp2_zero3_four_processes_equals_single_process(reference, tmp_path):
    assert_same(reference, run(tmp_path, "tp2dp2", 4, 2, 3))
