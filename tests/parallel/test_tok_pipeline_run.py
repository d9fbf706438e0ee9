"""A real 2-process `hydra-pretrain` HYDRA-TOK stage-1 run on the megatron engine under PP=2:
losses fall, each stage writes its shard, the run resumes exactly, and tokenizer.pt holds the
whole tokenizer under HydraTok's names (gathered from both stages)."""
import json

import pytest
import torch

from launch import run_torchrun
from pipeline_common import assert_resumes_exactly, metrics

ARGS = ["configs/tokenizer/tiny_stage1.yaml", "parallel.engine=megatron", "parallel.pp=2",
        "parallel.zero_stage=0", "parallel.micro_batch_size=4", "parallel.grad_accum=2",
        "train.steps=4", "checkpoint.every=2", "data.synthetic.num_samples=64",
        "tokenizer.eval_images=2", "tokenizer.ode_steps=2", "tracking.enabled=false"]


@pytest.mark.slow
def test_tok_pp2_run_checkpoints_resumes_and_writes_the_whole_tokenizer(tmp_path, megatron_tp1):
    from hydra_dist.config import load_config
    from hydra_dist.models.tokenizer import HydraTok
    a, b = tmp_path / "a", tmp_path / "b"
    res = run_torchrun(2, ARGS + [f"output_dir={a}"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    ma = metrics(a)
    assert [m["step"] for m in ma] == [1, 2, 3, 4]
    assert ma[-1]["loss"] < ma[0]["loss"] and all(m["grad_norm"] > 0 for m in ma)
    assert {"fm", "reg", "dist", "kl", "cos"} <= set(ma[0])
    ck = a / "checkpoints" / "step00000004"
    assert sorted(p.name for p in ck.glob("model_pp*")) == ["model_pp00_tp00.safetensors",
                                                            "model_pp01_tp00.safetensors"]
    sd = torch.load(a / "tokenizer.pt", weights_only=True)["state_dict"]
    names = {n for n, _ in HydraTok(load_config(a / "config.yaml")).named_parameters()}
    assert set(sd) == names
    assert set(json.loads((a / "eval.json").read_text())) == {"start", "end"}

    assert_resumes_exactly(ARGS, b, ma, ("loss", "fm", "reg", "dist"))
