"""The megatron engine's pipeline layouts match one process numerically (real gloo groups):
first-step loss terms, every gradient (gathered to rank 0) and a 5-step loss trajectory.

Tolerances (fp32): the pipeline runs the same operations in the same order per micro-batch, so
losses and gradients agree to float rounding of the reductions that differ (DP/TP all-reduce,
the global grad norm summed per stage): rel 1e-5 on losses, rtol 1e-4 / atol 2e-5 on gradients,
rel 1e-4 on the trajectory (AdamW amplifies rounding a little each step).
"""
from pathlib import Path

import pytest
import torch

from pipeline_common import assert_same as compare
from launch import run_torchrun

WORKER = Path(__file__).with_name("pipeline_worker.py")
STEPS = 5


def run(tmp_path, name, nproc, mode, tp, pp, vp, *extra):
    out = tmp_path / f"{name}.pt"
    res = run_torchrun(nproc, [str(out), mode, str(tp), str(pp), str(vp), str(STEPS), *extra],
                       script=WORKER, timeout=400)
    assert res.returncode == 0, res.stdout[-5000:]
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return run(tmp_path_factory.mktemp("ref"), "ref", 1, "ref", 1, 1, 1)


def assert_same(ref, got):
    compare(ref, got, ("loss", "ntp", "fm"))


def layer_ids(names):
    return sorted({int(n.split(".")[2]) for n in names if n.startswith("llm.layers.")})


def test_reference_trains(reference):
    traj = reference["trajectory"]
    assert traj[-1] < traj[0]
    assert any(n.startswith("gsb.") for n in reference["grads"])  # GSB trains: mu's gradient
    # crosses the pipeline inside the flow payload


def test_pp2_1f1b_equals_single_process(reference, tmp_path):
    got = run(tmp_path, "pp2", 2, "engine", 1, 2, 1)
    assert_same(reference, got)
    first, last = got["names"][(0, 0)], got["names"][(1, 0)]
    # each stage holds only its layers; the vision tower and embedding on the first,
    # the final norm and both heads on the last
    assert layer_ids(first) == [0, 1] and layer_ids(last) == [2, 3]
    assert {n.split(".")[0] for n in first} == {"patch", "gen_vit", "gsb", "sem_vit", "projector", "llm"}
    assert any(n.startswith("llm.embed.") for n in first)
    assert not any(n.startswith(("llm.norm", "llm.lm_head", "flow_head")) for n in first)
    assert {n.split(".")[0] for n in last} == {"llm", "flow_head"}
    assert any(n.startswith("llm.lm_head.") for n in last) and not any("embed" in n for n in last)
    assert sorted(first + last) == reference["names"][(0, 0)]  # together: exactly HydraModel


def test_interleaved_pp2_vp2_equals_single_process(reference, tmp_path):
    got = run(tmp_path, "vp2", 2, "engine", 1, 2, 2)
    assert_same(reference, got)
    # chunk v of stage p holds layer v*pp + p (megatron's interleaved assignment)
    assert layer_ids(got["names"][(0, 0)]) == [0, 2]
    assert layer_ids(got["names"][(1, 0)]) == [1, 3]


def test_no_pipelining_engine_equals_single_process(reference, tmp_path):
    assert_same(reference, run(tmp_path, "pp1", 1, "engine", 1, 1, 1))


@pytest.mark.slow
def test_pp2_tp2_four_processes_equals_single_process(reference, tmp_path):
    got = run(tmp_path, "pp2tp2", 4, "engine", 2, 2, 1)
    assert_same(reference, got)
    assert set(got["names"]) == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_tied_embeddings_engine_tp2_pp1_equals_single_process(tmp_path):
    """Tied embeddings on the megatron engine at pp=1 (the one chunk holds embedding and head;
    pp > 1 is refused by the config check): TP=2 matches the single-process tied model."""
    tied = "model.llm.tie_word_embeddings=true"
    ref = run(tmp_path, "ref_tied", 1, "ref", 1, 1, 1, tied)
    assert "llm.embed.weight" in ref["grads"]
    assert_same(ref, run(tmp_path, "tied_tp2", 2, "engine", 2, 1, 1, tied))
