"""A real 2-process `hydra-pretrain` run with the megatron engine under PP=2 (1F1B): losses
fall, every stage writes its safetensors shard, and an interrupted run resumes exactly."""

import pytest

from launch import run_torchrun
from pipeline_common import assert_resumes_exactly, metrics

ARGS = ["configs/tiny_cpu.yaml", "parallel.engine=megatron", "parallel.pp=2",
        "parallel.zero_stage=0", "parallel.grad_accum=4", "train.steps=4", "checkpoint.every=2",
        "data.synthetic.num_samples=256", "tracking.enabled=false"]


@pytest.mark.slow
def test_pp2_pretrain_run_falls_checkpoints_and_resumes_exactly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    res = run_torchrun(2, ARGS + [f"output_dir={a}"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    ma = metrics(a)
    assert [m["step"] for m in ma] == [1, 2, 3, 4]
    assert ma[-1]["loss"] < ma[0]["loss"] and all(m["grad_norm"] > 0 for m in ma)
    ck = a / "checkpoints" / "step00000004"
    assert sorted(p.name for p in ck.glob("model_pp*")) == ["model_pp00_tp00.safetensors",
                                                            "model_pp01_tp00.safetensors"]
    assert (ck / "manifest.json").is_file()

    assert_resumes_exactly(ARGS, b, ma, ("loss", "ntp_loss", "fm_loss"))
