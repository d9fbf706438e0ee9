#!/usr/bin/env bash
# One command on a GPU box that has only CUDA, torch and nvcc (docs/performance.md, "GPU check"):
#   1. wheels: the project's other dependencies from .whl/ (made by benchmarks/gpu_wheels.sh on a
#      machine with network), installed --no-index --no-deps into /tmp/site; nothing is fetched
#   2. build: the csrc/ GSB extensions, in place (nvcc, sm_90 by default)
#   3. tests: the CUDA GSB kernels vs their references (tests/ops, a missing CUDA build fails),
#      the attention paths (flash-attn varlen if installed, else SDPA) vs the dense fp32
#      reference (tests/models/test_varlen_plan.py)
#   4. bench_bf16 / bench_fp32: the GSB kernels vs the PyTorch reference (benchmarks/bench_gsb.py)
#   5. slice: tokens/s and MFU of a 1.5B-shape slice, our DeepSpeed step vs a plain PyTorch loop
#   6. train: a bf16 run at 1.5B widths (4 LLM layers) through the real trainer on a 1-rank NCCL
#      group; its MFU and peak memory vs the planner's prediction (benchmarks/gpu_step.py)
# About 5-7 minutes on one H100/H200 (the build is most of it); prints one summary at the end.
# Usage: bash benchmarks/gpu_check.sh [python]
#        bash benchmarks/gpu_check.sh --dry-run [python]   (CPU: steps 5 and 6 on the tiny shape)
#        SLICE_ARGS="--llm-layers 8 --mb 4" STEP_ARGS="--mb 8" bash benchmarks/gpu_check.sh
# Logs and JSON results: $GPU_CHECK_LOG (default /tmp/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
PY=${1:-${PYTHON:-python3}}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
LOG=${GPU_CHECK_LOG:-/tmp/gpu_check}; mkdir -p "$LOG"
SLICE_ARGS=${SLICE_ARGS:-}
STEP_ARGS=${STEP_ARGS:-}
WHL=${WHL_DIR:-.whl}
declare -A RES
STEPS=()

step() {  # step NAME CMD... : run, keep the log, record ok/FAIL and seconds
  local name=$1; shift
  local t0=$SECONDS
  STEPS+=("$name")
  if "$@" >"$LOG/$name.log" 2>&1; then RES[$name]="ok   $((SECONDS - t0))s"
  else RES[$name]="FAIL $((SECONDS - t0))s (see $LOG/$name.log)"; tail -30 "$LOG/$name.log"; fi
}

# 1. the wheels brought along (none needed where the environment already has everything)
if compgen -G "$WHL/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHL"/*.whl || { echo "gpu_check: installing the wheels in $WHL failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import hydra_dist, deepspeed, megatron.core, streaming, yaml" || {
  echo "gpu_check: a dependency is missing: run 'bash benchmarks/gpu_wheels.sh' on a machine with"
  echo "network and bring .whl/ along (docs/performance.md, GPU check)"; exit 1; }

if [[ $DRY == 1 ]]; then
  # shellcheck disable=SC2086
  step slice env DS_ACCELERATOR=cpu $PY -m hydra_dist.perf.slice_bench --dry-run --json "$LOG/slice.json" $SLICE_ARGS
  # shellcheck disable=SC2086
  step train env DS_ACCELERATOR=cpu $PY benchmarks/gpu_step.py --dry-run --json "$LOG/train.json" $STEP_ARGS
else
  $PY -c "import torch; assert torch.cuda.is_available(), 'no GPU visible'; print(torch.cuda.get_device_name())" || exit 1
  step build    $PY setup.py build_ext --inplace
  step tests    env HYDRA_REQUIRE_EXT=1 HYDRA_REQUIRE_CUDA_EXT=1 $PY -m pytest -q -rs -p no:cacheprovider \
                tests/ops tests/models/test_varlen_plan.py
  step bench_bf16 $PY benchmarks/bench_gsb.py --device cuda --dtype bfloat16
  step bench_fp32 $PY benchmarks/bench_gsb.py --device cuda --dtype float32
  # shellcheck disable=SC2086
  step slice    $PY -m hydra_dist.perf.slice_bench --json "$LOG/slice.json" $SLICE_ARGS
  # shellcheck disable=SC2086
  step train    $PY benchmarks/gpu_step.py --json "$LOG/train.json" $STEP_ARGS
fi
$PY -c "import flash_attn" 2>/dev/null && FA="flash-attn $($PY -c 'import flash_attn; print(flash_attn.__version__)')" || FA="no flash-attn (SDPA / reference attention)"

echo; echo "== GPU check =="
printf '%-12s %s\n' step result
for s in "${STEPS[@]}"; do printf '%-12s %s\n' "$s" "${RES[$s]}"; done
if [[ $DRY == 0 ]]; then
  grep -E "passed|failed" "$LOG/tests.log" | tail -1
  grep -E "^SKIPPED" "$LOG/tests.log"
  for b in bench_bf16 bench_fp32; do echo "-- $b"; grep -vE "^(device|measured|-)" "$LOG/$b.log" | sed -n '1,5p'; grep -E "^(device|measured)" "$LOG/$b.log"; done
fi
echo "-- training slice ($FA)"; grep -E "^(slice|\|)" "$LOG/slice.log"
echo "-- real trainer vs planner"; grep -E "^(gpu_step|\|)" "$LOG/train.log"
for s in "${STEPS[@]}"; do [[ ${RES[$s]} == ok* ]] || exit 1; done
