"""Generated-sample grids during unified training, for MLflow.

Runs on every rank in lockstep (same prompts, same seeds), so ZeRO-3's parameter gathers line
up; needs the pixel decoder, taken from the HYDRA-TOK checkpoint in model.tokenizer_from.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger("hydra_dist")
PROMPTS = ("a red circle at the center on blue", "a yellow square at the top left on black",
           "a green triangle at the bottom right on white", "a purple circle at the top right on orange")


class SampleGrid:
    def __init__(self, cfg, tokenizer):
        from hydra_dist.models.tokenizer.weights import load_tokenizer_run
        from pathlib import Path
        src = Path(cfg.model.tokenizer_from)
        self.decoder = load_tokenizer_run(str(src if src.is_dir() else src.parent)).decoder
        self.cfg, self.tok = cfg, tokenizer

    @torch.no_grad()
    def images(self, model, steps: int = 10, cfg_scale: float = 3.0):
        from hydra_dist.models.sampling import generate_latent
        from hydra_dist.models.tokenizer.decoder import euler_sample
        size = self.cfg.model.vit.image_size
        out = []
        was_training = model.training
        model.eval()
        for i, prompt in enumerate(PROMPTS):
            mu = generate_latent(model, self.tok, prompt, steps, cfg_scale, seed=i)
            noise = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(i))
            out.append(euler_sample(self.decoder, mu, noise, steps)[0])
        model.train(was_training)
        return torch.stack(out)
