"""A real 2-process `hydra-pretrain` run with the megatron engine under PP=2 (1F1B): losses
fall, every stage writes its safetensors shard, and an interrupted run resumes exactly."""

import pytest

from pipeline_common import assert_resumes_exactly, run_pp2

ARGS = ["configs/tiny_cpu.yaml", "parallel.engine=megatron", "parallel.pp=2",
        "parallel.zero_stage=0", "parallel.grad_accum=4", "train.steps=4", "checkpoint.every=2",
        "data.synthetic.num_samples=256", "tracking.enabled=false"]


@pytest.mark.slow
def test_pp2_pretrain_run_falls_checkpoints_and_resumes_exactly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ma = run_pp2(ARGS, a)
    assert_resumes_exactly(ARGS, b, ma, ("loss", "ntp_loss", "fm_loss"))
