"""hydra-eval-recon: reconstruct a folder of images with a trained HYDRA-TOK and report PSNR,
SSIM (and rFID when an Inception-v3 weight file is given); writes a side-by-side grid.

Usage:
  hydra-eval-recon --tokenizer runs/tiny_tok_stage1/tokenizer.pt --images DIR
                   [--steps N] [--grid recon.png] [--inception-weights inception_v3.pth]
Images are center-cropped to a square and resized to the tokenizer's model.vit.image_size;
decoding integrates the flow ODE from fixed noise (--seed) with N Euler steps (default: the
run's tokenizer.ode_steps). One process, TP=1 (tokenizer.pt holds full tensors).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="hydra-eval-recon", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="tokenizer.pt written at the end of a run")
    ap.add_argument("--images", required=True, help="folder of images")
    ap.add_argument("--steps", type=int, default=0, help="Euler steps (0: the run's ode_steps)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--limit", type=int, default=0, help="at most this many images (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the starting noise")
    ap.add_argument("--grid", default="recon_grid.png", help="side-by-side grid (first 16 images)")
    ap.add_argument("--inception-weights", default="",
                    help="torchvision Inception-v3 state dict: also report rFID")
    ap.add_argument("--json", default="", help="also write the metrics here")
    return ap.parse_args(argv)


def load_folder(folder: Path, size: int, limit: int):
    import torch
    from PIL import Image

    from hydra_dist.data.collate import image_to_tensor
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTS)
    if limit:
        files = files[:limit]
    if not files:
        raise FileNotFoundError(f"--images: no {'/'.join(EXTS)} files in {folder}")
    out = []
    for f in files:
        img = Image.open(f).convert("RGB")
        s = min(img.size)
        left, top = (img.width - s) // 2, (img.height - s) // 2
        out.append(image_to_tensor(img.crop((left, top, left + s, top + s)), size))
    return torch.stack(out), files


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    from hydra_dist.config import RunConfig
    from hydra_dist.config.loader import build
    from hydra_dist.distributed.init import init_distributed, shutdown
    from hydra_dist.models.tokenizer import HydraTok
    from hydra_dist.models.tokenizer.recon_eval import (InceptionFeatures, frechet_distance, psnr,
                                                        reconstruct, save_grid, ssim)
    obj = torch.load(args.tokenizer, map_location="cpu", weights_only=True)
    cfg = build(RunConfig, obj["meta"]["config"], {})
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(k, None)
    init_distributed(tp=1, pp=1, timeout_s=600, backend="gloo")
    try:
        model = HydraTok(cfg)
        from hydra_dist.models.tokenizer.weights import load_full
        load_full(model, obj["state_dict"], strict=True, where=args.tokenizer)
        model.eval()
        images, files = load_folder(Path(args.images), cfg.model.vit.image_size, args.limit)
        steps = args.steps or cfg.tokenizer.ode_steps
        recs = torch.cat([reconstruct(model, images[i:i + args.batch], steps, seed=args.seed + i)
                          for i in range(0, len(images), args.batch)])
        res = {"images": len(files), "ode_steps": steps, "psnr": psnr(recs, images).mean().item(),
               "ssim": ssim(recs, images).mean().item()}
        if args.inception_weights:
            inc = InceptionFeatures(args.inception_weights)
            fa = torch.cat([inc(images[i:i + args.batch]) for i in range(0, len(images), args.batch)])
            fb = torch.cat([inc(recs[i:i + args.batch]) for i in range(0, len(recs), args.batch)])
            res["rfid"] = frechet_distance(fa, fb)
        n = min(16, len(images))
        res["grid"] = str(save_grid(images[:n], recs[:n], args.grid,
                                    scale=max(1, 128 // images.shape[-1])))
    finally:
        shutdown()
    print(json.dumps(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
