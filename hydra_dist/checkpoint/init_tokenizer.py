"""Initialise the unified model's vision tower from a trained HYDRA-TOK: `model.tokenizer_from`.

The unified stages start from the tokenizer (docs/design.md): patch embedding, Gen-ViT, GSB and
Sem-ViT come from the `tokenizer.pt` a tokenizer run writes (full tensors, loaded with
weights_only); the pixel decoder, the teacher and the discriminator are not part of the unified
model. Shapes must match model.vit / model.gsb exactly; TP slices are cut per rank.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger("hydra_dist")
VISION_PREFIXES = ("patch.", "gen_vit.", "gsb.", "sem_vit.", "sem_cls.")


@torch.no_grad()
def load_tokenizer_parts(model: torch.nn.Module, path: str) -> list:
    from hydra_dist.config.pixel_norm import recorded_in_meta
    from hydra_dist.models.partition import split_tp

    from .init_weights import tp_coordinates
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.pt"
    if not p.is_file():
        raise FileNotFoundError(f"model.tokenizer_from: {path} has no tokenizer.pt")
    obj = torch.load(p, map_location="cpu", weights_only=True)
    state = obj["state_dict"]
    theirs, ours = recorded_in_meta(obj.get("meta") or {}), getattr(getattr(model, "patch", None), "pixel_norm", None)
    if ours is not None and theirs != ours:   # the tower would see pixels it was never trained on
        raise ValueError(f"model.tokenizer_from: {p} was trained with model.vit.pixel_norm={theirs}, "
                         f"this run has {ours}: set model.vit.pixel_norm={theirs} (or auto)")
    params = dict(model.named_parameters())
    tp, rank = tp_coordinates()
    loaded = []
    for name, full in state.items():
        if not name.startswith(VISION_PREFIXES):
            continue
        if name not in params:
            raise ValueError(f"model.tokenizer_from: {p}: {name} has no counterpart in the unified "
                             "model (do model.vit options match the tokenizer's?)")
        shard = split_tp(name, full, tp, rank)
        if shard.shape != params[name].shape:
            raise ValueError(f"model.tokenizer_from: {p}: {name} has shape {tuple(full.shape)}, the "
                             f"model {tuple(params[name].shape)} (tp={tp})")
        params[name].copy_(shard)
        loaded.append(name)
    missing = [n for n in params if n.startswith(VISION_PREFIXES) and n not in loaded]
    if missing:
        raise ValueError(f"model.tokenizer_from: {p} lacks {missing[:6]}")
    log.info("model.tokenizer_from: vision tower (%d tensors) from %s", len(loaded), p)
    return loaded
