"""Resuming under another layout: the megatron engine's state does not depend on DP, so a DP=2
run resumes on one process; DeepSpeed ZeRO-1..3 state is re-partitioned from the files
(test_elastic_resume.py); another engine, TP, PP or ZeRO stage is refused before anything
loads, naming both layouts and the supported way (export the weights, start from them)."""
import json

import pytest

from launch import run_torchrun

COMMON = ["configs/tiny_cpu.yaml", "checkpoint.every=2", "data.synthetic.num_samples=64",
          "tracking.enabled=false"]


def test_layout_rules():
    from pathlib import Path
    from hydra_dist.checkpoint.manager import check_resume_layout
    base = {"engine": "deepspeed", "tp": 1, "pp": 1, "dp": 2, "zero_stage": 3}
    assert check_resume_layout(Path("ck"), base, dict(base)) is False
    assert check_resume_layout(Path("ck"), {**base, "zero_stage": 0}, {**base, "zero_stage": 0, "dp": 4}) is False
    assert check_resume_layout(Path("ck"), base, {**base, "dp": 1}) is True    # re-partitioned
    assert check_resume_layout(Path("ck"), {**base, "zero_stage": 1}, {**base, "zero_stage": 1, "dp": 4}) is True
    mg = {**base, "engine": "megatron", "zero_stage": 0}
    assert check_resume_layout(Path("ck"), mg, {**mg, "dp": 1}) is False
    assert check_resume_layout(Path("ck"), {**base, "tp": 2}, base) is True   # TP under ZeRO too
    with pytest.raises(RuntimeError, match=r"ck: saved as deepspeed tp=1 pp=1 dp=2 zero_stage=2, this "
                                           r"run is deepspeed tp=1 pp=1 dp=2 zero_stage=3; resuming needs "
                                           r"the same engine, PP and ZeRO stage.*hydra-export-hf ck"):
        check_resume_layout(Path("ck"), {**base, "zero_stage": 2}, base)
    # ZeRO-0 on another TP size: its whole state is read by name (reshard.load_resharded_zero0)
    assert check_resume_layout(Path("ck"), {**base, "zero_stage": 0, "tp": 2}, {**base, "zero_stage": 0}) is True
    # the megatron engine's state is found by name on any TP / PP (megatron_reshard.py)
    assert check_resume_layout(Path("ck"), mg, {**mg, "tp": 2}) is True
    assert check_resume_layout(Path("ck"), {**mg, "pp": 2, "dp": 1}, mg) is True
    with pytest.raises(RuntimeError, match="same engine"):
        check_resume_layout(Path("ck"), mg, base)


def _steps(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if '"step"' in line]


def test_megatron_dp2_run_resumes_on_one_process(tmp_path):
    mg = COMMON + ["parallel.engine=megatron", "parallel.zero_stage=0", f"output_dir={tmp_path / 'mg'}"]
    res = run_torchrun(2, mg + ["train.steps=2"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    res = run_torchrun(1, mg + ["train.steps=3"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "resumed from" in res.stdout
    assert _steps(tmp_path / "mg") == [1, 2, 3]

