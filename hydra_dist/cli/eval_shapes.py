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

from hydra_dist.train.evaluation import evaluate

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
