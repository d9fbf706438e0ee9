"""Does a HYDRA-TOK run's pixel decoder decode this model's latents? (hydra-generate,
hydra-export-hf). The latents come from the patch embedding, Gen-ViT and GSB; a decoder trained
on another encoder draws noise, so those tensors must be the ones the decoder was trained with."""
from __future__ import annotations

import torch


ENCODER = ("patch.", "gen_vit.", "gsb.")   # what makes the latents a pixel decoder reads
MATCH_TOL = 1e-3                          # relative L2 per tensor; trained vs random is ~1


def encoder_mismatch(ours: dict, theirs: dict) -> str:
    """'' when `theirs` (a HYDRA-TOK state dict) holds the encoder `ours` makes latents with,
    else what differs. Both map names to full tensors (megatron's _extra_state entries skipped)."""
    worst, where = 0.0, ""
    for name, t in ours.items():
        if not name.startswith(ENCODER) or not torch.is_tensor(t):
            continue
        if name not in theirs or theirs[name].shape != t.shape:
            return f"{name} is missing from the decoder run or has another shape"
        ref = theirs[name].float()
        rel = float((t.float() - ref).norm() / ref.norm().clamp_min(1e-12))
        if rel > worst:
            worst, where = rel, name
    return f"{where} differs by {worst:.3g} (relative L2)" if worst > MATCH_TOL else ""
