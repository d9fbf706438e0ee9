"""hydra-export-hf: a training checkpoint (DeepSpeed ZeRO 0-3 with TP, or the megatron engine's
TP x PP) -> a Hugging Face folder.

Usage:
  hydra-export-hf CHECKPOINT OUT [--dtype fp32|bf16] [--shard-size 5GB] [--part all|tokenizer]
                  [--decoder TOK_RUN]
CHECKPOINT: a step folder (<run>/checkpoints/stepNNNNNNNN), <run>/checkpoints or <run> (latest).
Runs on CPU with no process group; memory stays near the largest tensor plus one shard.
OUT is a complete Hugging Face model (trust_remote_code=True): AutoModelForCausalLM (generate,
generate_image), AutoProcessor, AutoTokenizer, AutoImageProcessor; OUT/language_model loads
with transformers.Qwen2ForCausalLM.from_pretrained. The pixel decoder (text -> image) comes
from the run's model.tokenizer_from, or --decoder. See docs/export.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="hydra-export-hf", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--shard-size", default="5GB", help="max bytes per safetensors shard (e.g. 5GB, 500MB)")
    ap.add_argument("--part", choices=("all", "tokenizer"), default="all",
                    help="tokenizer: HYDRA-TOK only (patch, Gen-ViT, GSB, Sem-ViT)")
    ap.add_argument("--config", help="run config (default: <run>/config.yaml)")
    ap.add_argument("--vocab-size", type=int, default=None,
                    help="language_model/ vocabulary rows (default: the imported HF vocabulary "
                         "when the run used model.init_from, else model.llm.vocab_size)")
    ap.add_argument("--decoder", help="HYDRA-TOK run folder (or its tokenizer.pt) whose pixel "
                    "decoder goes into the export (default: the run's model.tokenizer_from)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # only DeepSpeed's pickled classes are imported
    from hydra_dist.logs import quiet_dependencies
    quiet_dependencies()
    from hydra_dist.export.hf_export import export_checkpoint
    try:
        info = export_checkpoint(args.checkpoint, args.out, args.dtype, args.shard_size, args.part,
                                 args.config, args.vocab_size, progress=not args.no_progress,
                                 decoder=args.decoder)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as e:
        print(f"hydra-export-hf: {e}", file=sys.stderr)
        return 1
    keep = ("checkpoint", "engine", "zero_stage", "dp", "tp", "pp", "virtual_pp", "tensors", "shards",
            "decoder")
    print(json.dumps({k: info[k] for k in keep if k in info}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
