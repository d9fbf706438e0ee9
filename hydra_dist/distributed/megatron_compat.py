"""The CPU compatibility layer for megatron-core: applied only when CUDA is absent.

megatron-core assumes CUDA in a few places that no config flag avoids (docs/design.md):
- the model-parallel RNG tracker reads and writes torch.cuda RNG state;
- the pipeline schedules allocate a token counter with a `device="cuda"` literal (even the
  no-pipelining schedule);
- p2p communication allocates receive buffers on `torch.cuda.current_device()` and calls
  `torch.cuda.synchronize()` after batched sends.
On a CPU-only host we give exactly those three megatron modules a `torch` that answers these
calls on the CPU; every other attribute is the real torch. Nothing outside these modules sees
a change, and on GPU nothing is patched. Everything megatron-specific that we change lives here.
"""
from __future__ import annotations

import importlib
import logging

import torch

log = logging.getLogger(__name__)
_APPLIED = False

# The megatron modules whose module-global `torch` is replaced (and only theirs).
PATCHED_MODULES = (
    "megatron.core.tensor_parallel.random",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
)


def _cpu_device(device):
    """'cuda', 'cuda:N', torch.device('cuda') or an int ordinal -> 'cpu'; anything else as is."""
    if isinstance(device, int) or (isinstance(device, str) and device.startswith("cuda")):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return "cpu"
    return device


def _on_cpu(fn):
    def wrapped(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        return fn(*args, **kwargs)
    wrapped.__name__ = getattr(fn, "__name__", "factory")
    return wrapped


class _CpuCuda:
    """The torch.cuda calls megatron makes, answered on the CPU: RNG state from the CPU
    generator (the tracker forks it), 'cpu' as the current device, no-op synchronisation."""
    get_rng_state = staticmethod(lambda device="cuda": torch.get_rng_state())
    set_rng_state = staticmethod(lambda new_state, device="cuda": torch.set_rng_state(new_state))
    manual_seed = staticmethod(torch.manual_seed)
    current_device = staticmethod(lambda: "cpu")
    synchronize = staticmethod(lambda device=None: None)

    def __getattr__(self, name):
        return getattr(torch.cuda, name)


class CpuTorch:
    """`torch` for the patched megatron modules: factory calls with device='cuda' land on CPU."""
    cuda = _CpuCuda()
    zeros = staticmethod(_on_cpu(torch.zeros))
    ones = staticmethod(_on_cpu(torch.ones))
    empty = staticmethod(_on_cpu(torch.empty))
    tensor = staticmethod(_on_cpu(torch.tensor))
    full = staticmethod(_on_cpu(torch.full))

    def __getattr__(self, name):
        return getattr(torch, name)


def needed() -> bool:
    return not torch.cuda.is_available()


def is_applied() -> bool:
    return _APPLIED


def apply_if_needed() -> bool:
    """Patch once if CUDA is absent; returns whether the layer is active."""
    if not needed():
        return False
    return _apply()


def _apply() -> bool:
    global _APPLIED
    if _APPLIED:
        return True
    from megatron.core.tensor_parallel import random as mrandom

    # The tracker's helpers take a device argument and touch torch.cuda directly.
    mrandom._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)
    mrandom._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    cpu_torch = CpuTorch()
    for name in PATCHED_MODULES:
        importlib.import_module(name).torch = cpu_torch
    _APPLIED = True
    log.info("megatron-core CPU compatibility layer active (no CUDA): RNG tracker on the CPU "
             "generator; schedules and p2p buffers on CPU (%s)", ", ".join(PATCHED_MODULES))
    return True
