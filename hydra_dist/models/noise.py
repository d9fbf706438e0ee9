"""The one noise-seed recipe of training, generation and evaluation.

A step's seed comes from (train.seed, step); each sample's generator from (step seed, sample id).
Noise therefore depends on neither the DP split nor the micro-batching, so every layout draws
the same noise for the same sample (what the equivalence tests compare). Tuple hashing of ints
is deterministic in CPython (no hash randomisation for ints). The exported remote code keeps
its own copy of per_sample_generator: it must run without this package.
"""
from __future__ import annotations

import torch


def step_noise_seed(seed: int, step: int) -> int:
    """The noise seed of optimizer step `step` (0-based) of a run seeded `seed`."""
    return hash((int(seed), int(step))) % (2 ** 62)


def per_sample_generator(noise_seed: int, sample_id: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash((int(noise_seed), int(sample_id))) % (2 ** 62))


def flow_noise_cpu(sample_ids_B, noise_seed: int, sample_shape, time_sampling: str):
    """Rectified-flow (t [B], eps [B, *sample_shape]) on the CPU, one generator per sample: t
    logit-normal (sigmoid of a normal) or uniform, drawn before eps from the same generator."""
    ts, epss = [], []
    for sid in sample_ids_B.tolist():
        gen = per_sample_generator(noise_seed, sid)
        z = torch.randn(1, generator=gen)
        ts.append(torch.sigmoid(z) if time_sampling == "logit_normal" else torch.rand(1, generator=gen))
        epss.append(torch.randn(tuple(sample_shape), generator=gen))
    return torch.cat(ts), torch.stack(epss)
