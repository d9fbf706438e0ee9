"""The collective-device rule holds in real runs: every collective hydra_dist issues itself, in
both training loops, on both engines, with checkpoints, the preemption flag and the GAN
discriminator, hands over a tensor placed by to_comm on the device its group's backend serves
(CUDA for NCCL). A CPU test cannot run NCCL; it proves every call goes through the rule, and
comm_device's answer for an NCCL group is checked on its own."""
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from launch import run_torchrun

WORKER = Path(__file__).with_name("comm_rule_worker.py")
COMMON = ["tracking.enabled=false", "train.steps=3", "checkpoint.every=2"]


def run(tmp_path, name, args):
    report = tmp_path / name
    res = run_torchrun(2, [*args, f"output_dir={tmp_path / (name + '_run')}", *COMMON],
                       script=WORKER, timeout=400, env={"COMM_RULE_REPORT": str(report)})
    assert res.returncode == 0, res.stdout[-5000:]
    reports = [json.loads(Path(f"{report}.{r}.json").read_text()) for r in range(2)]
    for rep in reports:
        assert rep["bad"] == [], rep["bad"]
    return {site for rep in reports for site in rep["sites"]}


def test_unified_deepspeed_zero3(tmp_path):
    sites = run(tmp_path, "ds", ["configs/tiny_cpu.yaml", "data.synthetic.num_samples=64"])
    modules = {s.split(":")[0] for s in sites}
    # loss denominators (the task), non-finite flag + logged losses (the engine), the preemption flag
    assert {"hydra_dist.train.tasks.unified", "hydra_dist.parallel.zero_engine",
            "hydra_dist.train.preemption"} <= modules, sites
    assert sum(s.startswith("hydra_dist.train.tasks.unified:") for s in sites) == 1, sites
    assert sum(s.startswith("hydra_dist.parallel.zero_engine:") for s in sites) == 2, sites


def test_unified_megatron_pp2(tmp_path):
    sites = run(tmp_path, "mg", ["configs/tiny_cpu.yaml", "data.synthetic.num_samples=64",
                                 "parallel.engine=megatron", "parallel.pp=2", "parallel.zero_stage=0",
                                 "parallel.grad_accum=2"])
    modules = {s.split(":")[0] for s in sites}
    assert "hydra_dist.parallel.megatron_engine" in modules, sites


def test_tokenizer_with_gan(tmp_path):
    sites = run(tmp_path, "tok", ["configs/tokenizer/tiny_stage1.yaml", "data.synthetic.num_samples=64",
                                  "tokenizer.weights.gan=0.05", "tokenizer.gan.start_step=0"])
    # the discriminator's gradients (the task); the non-finite flag and logged metrics (the engine)
    assert sum(s.startswith("hydra_dist.train.tasks.tokenizer:") for s in sites) == 1, sites
    assert sum(s.startswith("hydra_dist.parallel.zero_engine:") for s in sites) == 2, sites


def test_checker_catches_a_cpu_tensor_on_the_wrong_group(single_process_mp, monkeypatch):
    """The checker fails a tensor not placed by the rule, and comm_device answers CUDA for NCCL."""
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    import comm_checker
    from hydra_dist.distributed import init as dinit
    report: dict = {}
    saved = {n: getattr(dist, n) for n in comm_checker.CHECKED}
    try:
        comm_checker.install(report)
        ns = {"__name__": "hydra_dist.fake", "dist": dist, "torch": torch}
        exec("dist.all_reduce(torch.ones(2))", ns)                       # raw tensor: flagged
        exec("from hydra_dist.distributed.init import comm_tensor\n"
             "dist.all_reduce(comm_tensor([1.0, 2.0]))", ns)             # by the rule: fine
    finally:
        for n, f in saved.items():
            setattr(dist, n, f)
    assert len(report["bad"]) == 1 and "placed by to_comm=False" in report["bad"][0]
    assert len(report["sites"]) == 2
    monkeypatch.setattr(dinit.dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(dinit.torch.cuda, "current_device", lambda: 3)
    assert dinit.comm_device() == torch.device("cuda", 3)
