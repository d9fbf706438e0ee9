"""hydra-import-hf: a local Hugging Face Qwen2 folder -> initial LLM weights for a run.

Usage:
  hydra-import-hf HF_DIR OUT.safetensors [--config CONFIG [key=value ...]]
then train with  model.init_from=OUT.safetensors  (plus the printed model.llm.* overrides).

Reads only local files (config.json + safetensors); nothing is downloaded. With --config the
HF model is checked against the run's model.llm before anything is written.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="hydra-import-hf", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("hf_dir", help="local Hugging Face Qwen2 folder (config.json + *.safetensors)")
    ap.add_argument("out", help="output .safetensors file")
    ap.add_argument("--config", help="run config to check the LLM shape against")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for --config")
    args = ap.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    from hydra_dist.export.hf_import import import_qwen2, overrides_for
    llm_cfg = None
    if args.config:
        from hydra_dist.config import ConfigError, load_config
        try:
            llm_cfg = load_config(args.config, args.overrides).model.llm
        except ConfigError as e:
            print(f"config error:\n{e}", file=sys.stderr)
            return 2
    try:
        res = import_qwen2(args.hf_dir, args.out, llm_cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"hydra-import-hf: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"out": res["out"], "tensors": res["tensors"]}))
    print("train with:\n  model.init_from=" + res["out"] + " " + " ".join(overrides_for(res["llm"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
