"""A training step issues a bounded, documented number of host-device syncs and collectives
(docs/performance.md, "Host syncs and collectives per step"). Counted on CPU in real 2-process
runs by wrapping torch.distributed's collectives and the tensor reads that wait for the device
on a GPU (.item(), .cpu(), .tolist(), float(), int()) where hydra_dist's code calls them.

Every read site is classified: a device sync (bounded below) or a read of a host tensor (the
CPU batch before it is sent, the CPU copy of a reduced tensor, the HOST_KEYS the loader keeps on
the host). A new read in the step fails the test until it is classified here and in the docs."""
import json
from pathlib import Path

import pytest
import torch

from launch import run_torchrun

WORKER = Path(__file__).with_name("sync_count_worker.py")
GA = 2
U, Z, M = "hydra_dist.train.tasks.unified", "hydra_dist.parallel.zero_engine", "hydra_dist.parallel.megatron_engine"
P = "hydra_dist.train.preemption:agreed"
# reads of host tensors: CPU batches (denominators, FLOPs, label index), sample ids (HOST_KEYS),
# the loss terms once on the CPU
HOST_READS = {f"{U}:<genexpr>": 3 * GA, f"{U}:prepare_step": 2, "hydra_dist.perf.flops:attention_pairs": GA,
              "hydra_dist.perf.flops:unified_flops": 2 * GA, "hydra_dist.train.trainer:_metrics": 1,
              "hydra_dist.models.noise:flow_noise_cpu": GA}
CASES = {
    # ZeRO engine: the global loss denominators, the non-finite flag per micro-batch (it decides
    # the skip before backward), the logged loss terms, the preemption flag
    "zero2": (["parallel.zero_stage=2"],
              {f"{U}:loss_denominators": 1, f"{Z}:all_finite": GA, f"{Z}:train_step": 1, P: 1},
              # device syncs: denominators' .cpu() (+2 items of that CPU copy), each flag, the
              # loss terms' .cpu(), DeepSpeed's grad norm, the preemption flag
              {f"{U}:loss_denominators": 3, f"{Z}:all_finite": GA, f"{Z}:train_step": 1,
               f"{Z}:get_global_grad_norm": 1, P: 1}),
    # megatron engine, PP=2 (DP=1): denominators, loss terms over PP and DP, the global grad norm,
    # the preemption flag (with DP > 1: one flat gradient all-reduce more)
    "megatron_pp2": (["parallel.engine=megatron", "parallel.zero_stage=0", "parallel.pp=2"],
                     {f"{U}:loss_denominators": 1, f"{M}:train_step": 2, f"{M}:_clip": 1, P: 1},
                     {f"{U}:loss_denominators": 3, f"{M}:train_step": 1, f"{M}:_clip": 1, P: 1}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_step_syncs_and_collectives_are_bounded(tmp_path, case):
    extra, collectives, device_reads = CASES[case]
    args = ["configs/tiny_cpu.yaml", "data.synthetic.num_samples=64", "tracking.enabled=false",
            "train.steps=4", "checkpoint.every=100", "train.log_every=100",
            f"parallel.grad_accum={GA}", f"output_dir={tmp_path / 'run'}", *extra]
    res = run_torchrun(2, args, script=WORKER, timeout=400,
                       env={"SYNC_COUNT_REPORT": str(tmp_path / "rep")})
    assert res.returncode == 0, res.stdout[-4000:]
    rep = json.loads((tmp_path / "rep.0.json").read_text())
    for step in ("2", "3"):   # steady steps: no logging, no checkpoint, not the last
        got = rep[step]
        assert dict(got["collective"]) == collectives, (step, got["collective"])
        assert dict(got["read"]) == {**HOST_READS, **device_reads}, (step, got["read"])
    syncs = sum(device_reads.values()) - 2   # the denominators' two items read a CPU copy
    print(f"\n{case}: {sum(collectives.values())} collectives and {syncs} device syncs per step "
          f"(grad_accum={GA})")


def test_sample_ids_stay_on_the_host():
    from hydra_dist.data.loader import HOST_KEYS, to_device
    b = to_device({"sample_ids": torch.arange(3), "input_ids": torch.zeros(2, 3)}, "meta")
    assert "sample_ids" in HOST_KEYS and b["sample_ids"].device.type == "cpu"
    assert b["input_ids"].device.type == "meta"
