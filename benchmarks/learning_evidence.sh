#!/usr/bin/env bash
# Does HYDRA learn both directions on CPU? One command, three stages:
#   1. HYDRA-TOK stage 1 on the shapes set (encoder + pixel flow decoder), 300 steps,
#   2. the unified model on top of it (configs/unified/tiny_shapes_evidence.yaml: vision tower
#      from tokenizer.pt, Gen-ViT + GSB frozen, shifted uniform flow time),
#   3. hydra-eval-shapes: caption accuracy (understanding) and the dominant colour of generated
#      images (generation) on held-out samples, against chance; sample grids as PNG.
# Usage: bash benchmarks/learning_evidence.sh [OUT_DIR] [UNIFIED_STEPS] [N_EVAL]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/evidence}"
STEPS="${2:-1500}"
N="${3:-32}"
PY="${PYTHON:-python}"
"$PY" -m hydra_dist.cli.pretrain --nproc-per-node 2 configs/tokenizer/tiny_stage1.yaml \
    "output_dir=$OUT/tokenizer"
"$PY" -m hydra_dist.cli.pretrain --nproc-per-node 2 configs/unified/tiny_shapes_evidence.yaml \
    "output_dir=$OUT/unified" "model.tokenizer_from=$OUT/tokenizer/tokenizer.pt" "train.steps=$STEPS"
"$PY" -m hydra_dist.cli.eval_shapes "$OUT/unified" --decoder "$OUT/tokenizer" --n "$N" \
    --grid "$OUT/generated_grid.png"
