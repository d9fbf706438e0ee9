"""A real 2-process `hydra-pretrain` HYDRA-TOK stage-1 run on the megatron engine under PP=2:
losses fall, each stage writes its shard, the run resumes exactly, and tokenizer.pt holds the
whole tokenizer under HydraTok's names (gathered from both stages)."""
import json

import pytest
import torch

from pipeline_common import assert_resumes_exactly, run_pp2

ARGS = ["configs/tokenizer/tiny_stage1.yaml", "parallel.engine=megatron", "parallel.pp=2",
        "parallel.zero_stage=0", "parallel.micro_batch_size=4", "parallel.grad_accum=2",
        "train.steps=4", "checkpoint.every=2", "data.synthetic.num_samples=64",
        "tokenizer.eval_images=2", "tokenizer.ode_steps=2", "tracking.enabled=false"]


@pytest.mark.slow
def test_tok_pp2_run_checkpoints_resumes_and_writes_the_whole_tokenizer(tmp_path, megatron_tp1):
    from hydra_dist.config import load_config
    from hydra_dist.models.tokenizer import HydraTok
    a, b = tmp_path / "a", tmp_path / "b"
    ma = run_pp2(ARGS, a)
    assert {"fm", "reg", "dist", "kl", "cos"} <= set(ma[0])
    sd = torch.load(a / "tokenizer.pt", weights_only=True)["state_dict"]
    names = {n for n, _ in HydraTok(load_config(a / "config.yaml")).named_parameters()}
    assert set(sd) == names
    assert set(json.loads((a / "eval.json").read_text())) == {"start", "end"}

    assert_resumes_exactly(ARGS, b, ma, ("loss", "fm", "reg", "dist"))
