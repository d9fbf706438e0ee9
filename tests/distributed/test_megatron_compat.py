"""The CPU compatibility layer: inactive with CUDA, and what it patches works on CPU."""
import importlib

import pytest
import torch

from hydra_dist.distributed import megatron_compat as mc


def test_noop_when_cuda_is_present(monkeypatch):
    """With CUDA available nothing is patched: megatron's modules keep the real torch."""
    monkeypatch.setattr(mc, "_APPLIED", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    before = {n: importlib.import_module(n).torch for n in mc.PATCHED_MODULES}
    called = []
    monkeypatch.setattr(mc, "_apply", lambda: called.append(1) or True)
    assert mc.apply_if_needed() is False
    assert not called and not mc.is_applied()
    assert {n: importlib.import_module(n).torch for n in mc.PATCHED_MODULES} == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="the layer is for CPU-only hosts")
def test_applied_on_cpu_patches_only_megatron_modules():
    assert mc.apply_if_needed() is True and mc.is_applied()
    assert mc.apply_if_needed() is True  # idempotent
    for name in mc.PATCHED_MODULES:
        assert isinstance(importlib.import_module(name).torch, mc.CpuTorch)
    assert torch.zeros is not None and not isinstance(torch, mc.CpuTorch)  # global torch untouched
    import megatron.core.tensor_parallel.layers as other
    assert other.torch is torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="the layer is for CPU-only hosts")
def test_what_the_schedules_and_p2p_call_works_on_cpu():
    mc.apply_if_needed()
    from megatron.core.pipeline_parallel import p2p_communication, schedules
    t = schedules.torch.zeros([], dtype=torch.int, device="cuda")        # the token counter
    assert t.device.type == "cpu"
    buf = p2p_communication.torch.empty((2, 3), requires_grad=True,
                                         device=p2p_communication.torch.cuda.current_device(),
                                         dtype=torch.float32)               # a receive buffer
    assert buf.device.type == "cpu" and buf.requires_grad
    p2p_communication.torch.cuda.synchronize()                             # no-op, no error
    assert schedules.torch.ones(2, device=torch.device("cuda")).device.type == "cpu"
    assert schedules.torch.Tensor is torch.Tensor                          # everything else real


@pytest.mark.skipif(torch.cuda.is_available(), reason="the layer is for CPU-only hosts")
def test_rng_tracker_forks_the_cpu_generator():
    mc.apply_if_needed()
    from megatron.core.tensor_parallel import random as mrandom
    tracker = mrandom.get_cuda_rng_tracker()
    tracker.reset()
    tracker.add("test-rng", 1234)
    torch.manual_seed(0)
    outside = torch.get_rng_state()
    with tracker.fork("test-rng"):
        a = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), outside)  # the default stream is untouched
    tracker.reset()
    tracker.add("test-rng", 1234)
    with tracker.fork("test-rng"):
        b = torch.rand(3)
    assert torch.equal(a, b)  # the forked stream is reproducible from its seed
    tracker.reset()
