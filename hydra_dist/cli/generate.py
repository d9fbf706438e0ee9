"""hydra-generate: answer about an image, or generate an image from a prompt.

  hydra-generate RUN --image cat.png [--prompt "..."]       an answer about the image (KV cache)
  hydra-generate RUN --prompt "a red circle" --out a.png     an image (Euler ODE + CFG), with the
                     [--decoder TOK_RUN]                      export's decoder or TOK_RUN's
  hydra-generate RUN --prompt "once upon"                     text continuing the prompt

RUN is a training run folder (its config.yaml and latest checkpoint), a checkpoint folder, or a
hydra-export-hf folder of the whole model (part all: its shards and the run config it carries).
An export (hydra-export-hf) carries the pixel decoder of the run's tokenizer run; a run folder
needs --decoder. TOK_RUN is a HYDRA-TOK run folder (config.yaml + tokenizer.pt) whose pixel flow decoder turns
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
        from hydra_dist.export.qwen_map import export_to_ours_name
        where = p
        state = {export_to_ours_name(n): load() for n, load in iter_tensors(p)
                 if not n.startswith("decoder.")}   # the export's pixel decoder: export_decoder
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


def export_decoder(path: str, cfg):
    """The pixel decoder a hydra-export-hf folder carries (decoder.* + decoder_config), as
    HYDRA-TOK's PixelFlowDecoder; None for a run folder or an export without one."""
    import json

    from hydra_dist.export.st_io import iter_tensors
    p = Path(path)
    if not (p / "config.json").is_file() or (p / "checkpoints").is_dir():
        return None
    d = json.loads((p / "config.json").read_text()).get("decoder_config")
    if not d:
        return None
    from hydra_dist.config.tokenizer_schema import DecoderConfig
    from hydra_dist.models.layers import mp_config
    from hydra_dist.models.tokenizer.decoder import PixelFlowDecoder
    dec = PixelFlowDecoder(mp_config(), DecoderConfig(**d), cfg.model.vit,
                           cfg.model.gsb.latent_channels, 0.02)
    state = {n[len("decoder."):]: load() for n, load in iter_tensors(p) if n.startswith("decoder.")}
    missing, unexpected = dec.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("_extra_state")]
    if missing or unexpected:
        raise RuntimeError(f"{p}: decoder.* does not fit decoder_config: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return dec.eval()


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
    ap.add_argument("--out", help="generate an image from --prompt and write it here (PNG)")
    ap.add_argument("--steps", type=int, default=20, help="ODE steps in latent space")
    ap.add_argument("--decoder-steps", type=int, default=20, help="ODE steps of the pixel decoder")
    ap.add_argument("--cfg-scale", type=float, default=3.0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allow-mismatched-decoder", action="store_true",
                    help="decode even when --decoder's encoder is not the run's (draws noise)")
    args = ap.parse_args(argv)
    if args.image and (args.out or args.decoder):
        ap.error("--image (understanding) and --out/--decoder (image generation) exclude each other")
    if not (args.image or args.out or args.decoder or args.prompt):
        ap.error("give --image (understanding), --prompt with --out (an image), or --prompt (text)")
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
        if args.image or not (args.out or args.decoder):
            img = None
            if args.image:
                from PIL import Image

                from hydra_dist.data.collate import image_to_tensor
                img = image_to_tensor(Image.open(args.image), cfg.model.vit.image_size)
            print(sampling.answer(model, tok, img, args.prompt, args.max_new_tokens,
                                  args.temperature, args.seed), file=out)
            return 0
        from hydra_dist.models.tokenizer.decoder import euler_sample
        decoder = None if args.decoder else export_decoder(args.run, cfg)
        if decoder is None and not args.decoder:
            print(f"hydra-generate: {args.run} carries no pixel decoder: give --decoder TOK_RUN "
                  "(the HYDRA-TOK run its vision tower came from)", file=sys.stderr)
            return 2
        why = ""
        if decoder is None:
            from hydra_dist.models.tokenizer.encoder_match import encoder_mismatch
            from hydra_dist.models.tokenizer.weights import load_tokenizer_run
            tok_model = load_tokenizer_run(args.decoder)
            decoder = tok_model.decoder
            why = encoder_mismatch(model.state_dict(), tok_model.state_dict())
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
        img = euler_sample(decoder, mu, noise, args.decoder_steps)[0]
        args.out = args.out or "generated.png"
        save_png(img, Path(args.out))
        print(args.out, file=out)
        return 0
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
