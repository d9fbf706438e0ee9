"""The CPU compatibility layer for megatron-core: applied only when CUDA is absent.

megatron-core assumes CUDA in a few places that no config flag avoids (ENVIRONMENT.md): the
model-parallel RNG tracker reads torch.cuda RNG state, and some buffers are allocated on
torch.cuda.current_device(). On a CPU-only host we redirect exactly those; on GPU nothing is
patched. Everything megatron-specific that we change lives in this one module.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)
_APPLIED = False


class _CpuCudaRng:
    """The torch.cuda RNG calls megatron's tracker makes, answered by the CPU generator."""
    get_rng_state = staticmethod(torch.get_rng_state)
    set_rng_state = staticmethod(torch.set_rng_state)
    manual_seed = staticmethod(torch.manual_seed)

    def __getattr__(self, name):
        return getattr(torch.cuda, name)


class _TorchWithCpuRng:
    cuda = _CpuCudaRng()

    def __getattr__(self, name):
        return getattr(torch, name)


def apply_if_needed() -> bool:
    """Patch once if CUDA is absent; returns whether the layer is active."""
    global _APPLIED
    if torch.cuda.is_available():
        return False
    if _APPLIED:
        return True
    from megatron.core.tensor_parallel import random as mrandom

    # The RNG tracker forks torch.cuda's generator; point megatron's random module (only it)
    # at the CPU generator, so model_parallel_cuda_manual_seed and tracker forks work.
    mrandom._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)
    mrandom._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    mrandom.torch = _TorchWithCpuRng()
    _APPLIED = True
    log.info("megatron-core CPU compatibility layer active (no CUDA): RNG tracker on CPU generator")
    return True
