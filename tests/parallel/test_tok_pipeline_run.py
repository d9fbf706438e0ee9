"""A real 2-process `hydra-pretrain` HYDRA-TOK stage-1 run on the megatron engine under PP=2:
losses fall, each stage writes its shard, the run resumes exactly, and tokenizer.pt holds the
whole tokenizer under HydraTok's names (gathered from both stages)."""
import json

import pytest
import torch

from launch import run_torchrun

ARGS = ["configs/tokenizer/tiny_stage1.yaml", "parallel.engine=megatron", "parallel.pp=2",
        "parallel.zero_stage=0", "parallel.micro_batch_size=4", "parallel.grad_accum=2",
        "train.steps=4", "checkpoint.every=2", "data.synthetic.num_samples=64",
        "tokenizer.eval_images=2", "tokenizer.ode_steps=2", "tracking.enabled=false"]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


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

    res = run_torchrun(2, ARGS + [f"output_dir={b}", "train.stop_at_step=2"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    res = run_torchrun(2, ARGS + [f"output_dir={b}"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "resumed from" in res.stdout
    mb = metrics(b)
    assert [m["step"] for m in mb] == [1, 2, 3, 4]
    for x, y in zip(ma, mb):
        for key in ("loss", "fm", "reg", "dist"):
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-7), (x["step"], key)
