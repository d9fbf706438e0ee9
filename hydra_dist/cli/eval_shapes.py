"""hydra-eval-shapes: does a model trained on the shapes-and-colours set learn both directions?

  hydra-eval-shapes RUN [--decoder TOK_RUN] [--n 64] [--grid generated.png]

(a) understanding: greedy captions of held-out images; accuracy of the named shape colour,
    shape and background against the truth (chance: 1/8 colour, 1/3 shape).
(b) generation (needs the HYDRA-TOK pixel decoder): images from held-out prompts; the dominant
    colour (border pixels, nearest palette entry) must be the prompt's background colour.
Prints a table and a JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

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
             cfg_scale: float = 3.0, generated: list | None = None) -> dict:
    """Accuracies; generated images (with their prompts) are appended to `generated`."""
    from hydra_dist.data.collate import image_to_tensor
    from hydra_dist.data.synthetic import make_sample
    from hydra_dist.models import sampling
    hits = {"fg": 0, "shape": 0, "bg": 0, "gen_bg": 0}
    for i in range(n):
        img, caption, attrs = make_sample(i, HELD_OUT_SEED, size)
        got = parse_caption(sampling.answer(model, tok, image_to_tensor(img, size), "", 48))
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="hydra-eval-shapes", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--decoder", help="HYDRA-TOK run folder: also evaluate generation")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg-scale", type=float, default=3.0)
    ap.add_argument("--grid", help="write the first 16 generated images as one PNG (prompts printed)")
    args = ap.parse_args(argv)
    from hydra_dist.cli.generate import load_run
    from hydra_dist.data.tokenizer import load_tokenizer
    from hydra_dist.distributed.init import init_distributed, shutdown
    from hydra_dist.models.hydra import HydraModel
    init_distributed(1, 1, 600, "gloo")
    try:
        cfg, model = load_run(args.run, lambda c: HydraModel(c.model))
        tok_model = None
        if args.decoder:
            from hydra_dist.models.tokenizer.weights import load_tokenizer_run
            tok_model = load_tokenizer_run(args.decoder)
        generated = []
        res = evaluate(model, load_tokenizer(cfg.data.tokenizer), cfg.model.vit.image_size,
                       args.n, tok_model, args.steps, args.cfg_scale, generated)
    finally:
        shutdown()
    print("| measure | accuracy | chance |\n| --- | --- | --- |")
    for k, chance in (("fg", 1 / 8), ("shape", 1 / 3), ("bg", 1 / 8), ("gen_bg", 1 / 8)):
        if f"{k}_acc" in res:
            print(f"| {k} | {res[f'{k}_acc']:.3f} | {chance:.3f} |")
    print(json.dumps(res))
    if args.grid and generated:
        write_grid(generated[:16], args.grid)
    return 0


def write_grid(generated: list, path: str, cols: int = 4) -> None:
    """Images in rows of `cols` with a 2 px gap; prints the prompt of each cell."""
    from hydra_dist.cli.generate import save_png
    imgs = [img for _, img in generated]
    _, H, W = imgs[0].shape
    rows = (len(imgs) + cols - 1) // cols
    grid = torch.ones(3, rows * (H + 2), cols * (W + 2))
    for k, img in enumerate(imgs):
        r, c = divmod(k, cols)
        grid[:, r * (H + 2):r * (H + 2) + H, c * (W + 2):c * (W + 2) + W] = img
    save_png(grid, path)
    for k, (prompt, _) in enumerate(generated):
        print(f"grid cell {k // cols},{k % cols}: {prompt}")


if __name__ == "__main__":
    sys.exit(main())
