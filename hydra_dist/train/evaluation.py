"""Held-out evaluation of the unified model during training and by hydra-eval-shapes.

- the shapes probe: greedy captions of held-out shapes images (never in a training set) scored
  on the named colour, shape and background; with a pixel decoder also images generated from
  held-out prompts, scored on their background colour;
- sample grids: images generated from fixed prompts, for MLflow.
Both run on every rank in lockstep (same images, prompts and seeds), so ZeRO-3's parameter
gathers line up; generation needs the pixel decoder of the HYDRA-TOK checkpoint in
model.tokenizer_from.
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
        self.tok_model = load_tokenizer_run(str(src if src.is_dir() else src.parent))
        self.decoder = self.tok_model.decoder
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


HELD_OUT_SEED = 987654  # never used for training sets


def nearest_colour(rgb) -> str:
    from hydra_dist.data.synthetic import COLORS
    return min(COLORS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLORS[c], rgb)))


def dominant_colour(img_3HW) -> str:
    """Palette colour of the border pixels (the background fills the border)."""
    x = ((img_3HW.clamp(-1, 1) + 1) * 127.5)
    border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1)  # [3, 4W]
    return nearest_colour(border.mean(dim=1).tolist())


def parse_caption(text: str) -> dict:
    """'a red circle at the top left on blue' -> fields (missing ones stay None)."""
    from hydra_dist.data.synthetic import COLORS, SHAPES
    words = text.replace(",", " ").split()
    colours = [w for w in words if w in COLORS]
    shapes = [w for w in words if w in SHAPES]
    return {"fg": colours[0] if colours else None, "shape": shapes[0] if shapes else None,
            "bg": colours[-1] if len(colours) > 1 else None}


def evaluate(model, tok, size: int, n: int, tok_model=None, steps: int = 20,
             cfg_scale: float = 3.0, generated: list | None = None,
             captions: list | None = None) -> dict:
    """Accuracies; generated images (with their prompts) are appended to `generated`, the
    captions (with the true ones) to `captions`."""
    from hydra_dist.data.collate import image_to_tensor
    from hydra_dist.data.synthetic import make_sample
    from hydra_dist.models import sampling
    hits = {"fg": 0, "shape": 0, "bg": 0, "gen_bg": 0}
    for i in range(n):
        img, caption, attrs = make_sample(i, HELD_OUT_SEED, size)
        text = sampling.answer(model, tok, image_to_tensor(img, size), "", 48)
        if captions is not None:
            captions.append({"caption": text, "truth": caption})
        got = parse_caption(text)
        for k in ("fg", "shape", "bg"):
            hits[k] += int(got[k] == attrs[k])
        if tok_model is not None:
            from hydra_dist.models.tokenizer.decoder import euler_sample
            mu = sampling.generate_latent(model, tok, caption, steps, cfg_scale, seed=i)
            noise = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(i))
            out = euler_sample(tok_model.decoder, mu, noise, steps)[0]
            hits["gen_bg"] += int(dominant_colour(out) == attrs["bg"])
            if generated is not None:
                generated.append((caption, out))
    res = {f"{k}_acc": v / n for k, v in hits.items() if k != "gen_bg" or tok_model is not None}
    res.update(n=n, chance_colour=1 / 8, chance_shape=1 / 3)
    return res


class ShapesProbe:
    """What the trainer logs every train.eval_every steps: eval/{fg,shape,bg}_acc (and
    eval/gen_bg_acc with a decoder) and the captions themselves, as a JSON artifact."""

    def __init__(self, cfg, tokenizer, decoder_model=None, n: int = 8):
        self.cfg, self.tok, self.dec, self.n = cfg, tokenizer, decoder_model, n

    @torch.no_grad()
    def run(self, model) -> tuple:
        """(accuracies, [{caption, truth}] per held-out image)."""
        was_training = model.training
        model.eval()
        captions: list = []
        try:
            acc = evaluate(model, self.tok, self.cfg.model.vit.image_size, self.n, self.dec,
                           steps=10, captions=captions)
        finally:
            model.train(was_training)
        return acc, captions
