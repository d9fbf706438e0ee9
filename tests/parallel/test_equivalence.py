"""TP and ZeRO layouts match one process numerically (real gloo process groups)."""
from pathlib import Path

import pytest
import torch

from launch import run_torchrun

WORKER = Path(__file__).with_name("equivalence_worker.py")
STEPS = 5


def run(tmp_path, name, nproc, tp, zero, *extra):
    out = tmp_path / f"{name}.pt"
    res = run_torchrun(nproc, [str(out), str(tp), str(zero), str(STEPS), *extra], script=WORKER,
                       timeout=300)
    assert res.returncode == 0, res.stdout[-5000:]
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return run(tmp_path_factory.mktemp("ref"), "ref", 1, 1, 0)


def assert_same(ref, got, grads=True, atol=2e-5):
    for k in ("loss", "ntp", "fm"):
        assert got[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-6), k
    if grads:
        assert ref["grads"].keys() == got["grads"].keys()
        for n, g in ref["grads"].items():
            torch.testing.assert_close(got["grads"][n], g, rtol=1e-4, atol=atol, msg=n)
    assert got["trajectory"] == pytest.approx(ref["trajectory"], rel=1e-4, abs=1e-5)


def test_reference_trains(reference):
    traj = reference["trajectory"]
    assert traj[-1] < traj[0]
    # frozen Gen-ViT gets no gradient, everything else does
    assert not any(n.startswith("gen_vit.") or n.startswith("patch.") for n in reference["grads"])
    assert any(n.startswith("gsb.") for n in reference["grads"])


def test_tp2_equals_tp1(reference, tmp_path):
    assert_same(reference, run(tmp_path, "tp2", 2, 2, 0))


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_zero_over_dp2_equals_single_process(reference, tmp_path, zero):
    got = run(tmp_path, f"z{zero}", 2, 1, zero)
    assert_same(reference, got)
    if zero == 3:
        assert got["zero3_share"] == pytest.approx(0.5, abs=0.02)  # each rank holds ~1/2


@pytest.mark.slow
def test_tp2_dp2_zero3_four_processes_equals_single_process(reference, tmp_path):
    got = run(tmp_path, "tp2dp2", 4, 2, 3)
    assert_same(reference, got)
    assert got["zero3_share"] == pytest.approx(0.5, abs=0.02)


def test_activation_checkpointing_changes_nothing(reference, tmp_path):
    assert_same(reference, run(tmp_path, "ckpt", 1, 1, 0, "parallel.activation_checkpointing=true"))


TIED = "model.llm.tie_word_embeddings=true"  # as Qwen2.5-1.5B: the LM head is the embedding


@pytest.fixture(scope="module")
def reference_tied(tmp_path_factory):
    return run(tmp_path_factory.mktemp("ref_tied"), "ref_tied", 1, 1, 0, TIED)


def test_tied_head_tp2_equals_tp1(reference_tied, tmp_path):
    """The tied head's dL/dh is all-reduced over TP (llm.tied_logits): without it each rank's
    hidden-state gradient covers only its vocabulary slice and every gradient below the head
    is wrong."""
    assert "llm.embed.weight" in reference_tied["grads"]
    assert_same(reference_tied, run(tmp_path, "tied_tp2", 2, 2, 0, TIED))


def test_tied_head_zero3_equals_single_process(reference_tied, tmp_path):
    assert_same(reference_tied, run(tmp_path, "tied_z3", 2, 1, 3, TIED))
