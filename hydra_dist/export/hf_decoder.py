"""The pixel decoder an export carries: HYDRA-TOK's `decoder.*` tensors from the tokenizer run the
unified model's vision tower came from. A unified checkpoint holds no decoder (the unified model
never trains one); without it an export cannot turn a generated latent into pixels."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger("hydra_dist")


@dataclass
class Decoder:
    tensors: dict   # decoder.* -> full tensor
    config: dict    # the remote code's decoder_config
    source: str


def _tokenizer_pt(path: str) -> Path:
    p = Path(path)
    return p / "tokenizer.pt" if p.is_dir() else p


def load_decoder(explicit: Optional[str], cfg, ck) -> Optional[Decoder]:
    """The decoder of `explicit` (refused when its encoder is not the checkpoint's), else of
    cfg.model.tokenizer_from (skipped with a warning when it does not match: the run's encoder
    trained on), else None."""
    from hydra_dist.config import load_config
    from hydra_dist.models.tokenizer.encoder_match import ENCODER, encoder_mismatch
    src = explicit or cfg.model.tokenizer_from
    if not src:
        log.warning("export: no pixel decoder (model.tokenizer_from is empty and no --decoder): "
                    "the export understands and writes text but cannot draw")
        return None
    pt = _tokenizer_pt(src)
    if not pt.is_file():
        raise FileNotFoundError(f"decoder: {src} has no tokenizer.pt")
    run_cfg = pt.parent / "config.yaml"
    if not run_cfg.is_file():
        raise FileNotFoundError(f"decoder: {run_cfg} (the tokenizer run's config) is missing")
    state = torch.load(pt, map_location="cpu", weights_only=True)["state_dict"]
    ours = {n: ck.load(n) for n in ck.names() if n.startswith(ENCODER)}
    why = encoder_mismatch(ours, state)
    if why:
        msg = (f"decoder: {pt} does not decode this checkpoint's latents ({why}); its pixel "
               "decoder was trained on another encoder")
        if explicit:
            raise ValueError(msg)
        log.warning("export: %s: exporting without a decoder", msg)
        return None
    d = load_config(str(run_cfg), []).tokenizer.decoder
    config = {"hidden_size": d.hidden_size, "num_layers": d.num_layers, "num_heads": d.num_heads,
              "mlp_size": d.mlp_size, "time_embed_dim": d.time_embed_dim}
    tensors = {n: t for n, t in state.items() if n.startswith("decoder.")}
    if not tensors:
        raise ValueError(f"decoder: {pt} holds no decoder.* tensors")
    return Decoder(tensors, config, str(pt.resolve()))
