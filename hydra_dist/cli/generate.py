"""hydra-generate: answer about an image, or generate an image from a prompt.

  hydra-generate RUN --image cat.png [--prompt "..."]                     text (KV cache)
  hydra-generate RUN --prompt "a red circle" --decoder TOK_RUN --out a.png  image (Euler ODE + CFG)

RUN is a training run folder (its config.yaml and latest checkpoint), a checkpoint folder, or a
hydra-export-hf folder of the whole model (part all: its shards and the run config it carries).
TOK_RUN is a HYDRA-TOK run folder (config.yaml + tokenizer.pt) whose pixel flow decoder turns
latents into pixels. It must be the tokenizer the run's vision tower came from
(model.tokenizer_from): the latents are made by the run's patch embedding, Gen-ViT and GSB, and
a decoder trained on another encoder draws noise. A mismatch is refused (exit 2) unless
--allow-mismatched-decoder. In understanding mode --prompt is a text the answer continues (the
model was trained to caption); with a chat-tuned run it is the user's question.
Only the answer (or the image path) goes to stdout; everything else goes to stderr. CPU, one
process.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

import torch


def load_run(path: str, build):
    """(cfg, model) from a run/checkpoint folder (weights streamed from its DeepSpeed or
    megatron shards) or from a hydra-export-hf folder (its safetensors shards and the run config
    it carries; the tokenizer it ships when the run used a Hugging Face one)."""
    from hydra_dist.config import load_config
    from hydra_dist.export.hf_export import RUN_CONFIG, resolve_checkpoint
    p = Path(path)
    if (p / "config.json").is_file() and not (p / "checkpoints").is_dir():
        from hydra_dist.export.st_io import iter_tensors
        if not (p / RUN_CONFIG).is_file():
            raise FileNotFoundError(f"{p}: an export without {RUN_CONFIG} (written by "
                                    "hydra-export-hf since it records the run's config); export "
                                    "the checkpoint again, or give the run folder")
        over = ["model.attention=reference"] + \
            ([f"data.tokenizer={p}"] if (p / "tokenizer.json").is_file() else [])
        cfg = load_config(p / RUN_CONFIG, over)
        where, state = p, {n: load() for n, load in iter_tensors(p)}
    else:
        from hydra_dist.export.readers import open_checkpoint
        step_dir, run_dir = resolve_checkpoint(path)
        cfg = load_config(run_dir / "config.yaml", ["model.attention=reference"])
        where, state = step_dir, dict(open_checkpoint(step_dir).items())
    model = build(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    wanted = [m for m in missing if not m.startswith("teacher.")]
    if wanted or unexpected:
        raise RuntimeError(f"{where}: checkpoint does not fit the model: missing {wanted[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return cfg, model.eval()


ENCODER = ("patch.", "gen_vit.", "gsb.")   # what makes the latents the decoder reads
MATCH_TOL = 1e-3                          # relative L2 per tensor; trained vs random is ~1


def decoder_mismatch(model, tok_model) -> str:
    """'' when tok_model's encoder is the one `model` makes latents with, else what differs."""
    theirs = tok_model.state_dict()
    worst, where = 0.0, ""
    for name, t in model.state_dict().items():
        if not name.startswith(ENCODER) or not torch.is_tensor(t):   # megatron's _extra_state
            continue
        if name not in theirs or theirs[name].shape != t.shape:
            return f"{name} is missing from the decoder run or has another shape"
        ref = theirs[name].float()
        rel = float((t.float() - ref).norm() / ref.norm().clamp_min(1e-12))
        if rel > worst:
            worst, where = rel, name
    return f"{where} differs by {worst:.3g} (relative L2)" if worst > MATCH_TOL else ""


def save_png(img_3HW, path: Path) -> None:
    from PIL import Image
    arr = ((img_3HW.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="hydra-generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--image", help="answer about this image")
    ap.add_argument("--prompt", default="")
    ap.add_argument("--decoder", help="HYDRA-TOK run folder (pixel decoder) for image generation")
    ap.add_argument("--out", default="generated.png")
    ap.add_argument("--steps", type=int, default=20, help="ODE steps in latent space")
    ap.add_argument("--decoder-steps", type=int, default=20, help="ODE steps of the pixel decoder")
    ap.add_argument("--cfg-scale", type=float, default=3.0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allow-mismatched-decoder", action="store_true",
                    help="decode even when --decoder's encoder is not the run's (draws noise)")
    args = ap.parse_args(argv)
    if not args.image and not args.decoder:
        ap.error("give --image (understanding) or --prompt with --decoder (generation)")
    logging.basicConfig(level=logging.WARNING)
    from hydra_dist.logs import quiet_dependencies
    quiet_dependencies()
    from hydra_dist.distributed.init import init_distributed
    out = sys.stdout
    # Libraries print to stdout (DeepSpeed's accelerator notice): only the answer goes there.
    with contextlib.redirect_stdout(sys.stderr):
        init_distributed(1, 1, 600, "gloo")
        return _run(args, out)


def _run(args, out) -> int:
    from hydra_dist.data.tokenizer import load_tokenizer
    from hydra_dist.distributed.init import shutdown
    from hydra_dist.models import sampling
    from hydra_dist.models.hydra import HydraModel
    try:
        cfg, model = load_run(args.run, lambda c: HydraModel(c.model))
        tok = load_tokenizer(cfg.data.tokenizer)
        if args.image:
            from PIL import Image

            from hydra_dist.data.collate import image_to_tensor
            img = image_to_tensor(Image.open(args.image), cfg.model.vit.image_size)
            print(sampling.answer(model, tok, img, args.prompt, args.max_new_tokens,
                                  args.temperature, args.seed), file=out)
            return 0
        from hydra_dist.models.tokenizer.decoder import euler_sample
        from hydra_dist.models.tokenizer.weights import load_tokenizer_run
        tok_model = load_tokenizer_run(args.decoder)
        why = decoder_mismatch(model, tok_model)
        if why and not args.allow_mismatched_decoder:
            origin = (f"it came from model.tokenizer_from={cfg.model.tokenizer_from}"
                      if cfg.model.tokenizer_from else
                      "model.tokenizer_from is empty, so they were never trained")
            print(f"hydra-generate: {args.decoder} does not decode {args.run}'s latents: {why}. "
                  f"The run's latents come from its own Gen-ViT and GSB ({origin}); give --decoder "
                  f"the HYDRA-TOK run the vision tower came from, or --allow-mismatched-decoder",
                  file=sys.stderr)
            return 2
        mu = sampling.generate_latent(model, tok, args.prompt, args.steps, args.cfg_scale, args.seed)
        size = cfg.model.vit.image_size
        noise = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(args.seed))
        img = euler_sample(tok_model.decoder, mu, noise, args.decoder_steps)[0]
        save_png(img, Path(args.out))
        print(args.out, file=out)
        return 0
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
