"""HYDRA-TOK on the megatron engine: PP=2 (1F1B, 4 micro-batches), pp=1 and PP2 x DP2 match one
process (real gloo groups): first-step loss parts, every gradient and a 5-step loss trajectory.

Tolerances (fp32): each micro-batch runs the same operations as HydraTok.forward +
TokenizerObjective.generator; what differs is summation order (reg + dist are added to the
FM loss as one payload term, the grad norm is summed per stage): rel 1e-5 on losses, rtol 1e-4
/ atol 2e-5 on gradients, rel 1e-4 on the trajectory (AdamW amplifies rounding a little).
"""
from pathlib import Path

import pytest
import torch

from pipeline_common import assert_same as compare
from launch import run_torchrun

WORKER = Path(__file__).with_name("tok_pipeline_worker.py")
STEPS = 5


def run(tmp_path, nproc, pp):
    """-> (reference, engine) results of one torchrun (the worker computes both)."""
    out = tmp_path / f"pp{pp}.pt"
    res = run_torchrun(nproc, [str(out), str(pp), str(STEPS)], script=WORKER, timeout=300)
    assert res.returncode == 0, res.stdout[-5000:]
    both = torch.load(out, weights_only=False)
    return both["ref"], both["got"]


def assert_same(ref, got):
    compare(ref, got, ("loss", "fm", "reg", "dist", "kl", "cos"))


def test_tok_pp2_equals_single_process(tmp_path):
    reference, got = run(tmp_path, 2, 2)
    assert reference["trajectory"][-1] < reference["trajectory"][0]
    assert_same(reference, got)
    first, last = got["names"][(0, 0)], got["names"][(1, 0)]
    # the encoder and the decoder's input side on stage 0, decoder blocks split 2 + 2,
    # the output side on stage 1; together exactly HydraTok's parameter names
    assert {n.split(".")[0] for n in first} == {"patch", "gen_vit", "gsb", "sem_vit", "decoder"}
    assert {n.split(".")[2] for n in first if n.startswith("decoder.blocks.")} == {"0", "1"}
    assert {n.split(".")[2] for n in last if n.startswith("decoder.blocks.")} == {"2", "3"}
    assert all(n.startswith("decoder.") for n in last)
    assert any(n.startswith("decoder.out.") for n in last)
    assert sorted(first + last) == reference["names"][(0, 0)]


@pytest.mark.slow
def test_tok_no_pipelining_engine_equals_single_process(tmp_path):
    assert_same(*run(tmp_path, 1, 1))


@pytest.mark.slow
def test_tok_pp2_dp2_four_processes_equals_single_process(tmp_path):
    # each DP rank takes one image of every 2-image micro-batch; the engine averages over DP
    assert_same(*run(tmp_path, 4, 2))
