#!/usr/bin/env bash
# On a machine with a GPU: build the CUDA GSB kernels, run their tests, run the benchmark, then
# measure a few training steps of a 1.5B-shape slice (4 LLM layers, bf16, flash-attn when
# installed: tokens/s and MFU, hydra_dist/perf/slice_bench.py), and print a short summary.
# Usage: bash benchmarks/gpu_check.sh [python]
#        bash benchmarks/gpu_check.sh --dry-run [python]   (CPU: the slice script on a tiny shape)
#        SLICE_ARGS="--llm-layers 8 --mb 4" bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
PY=${1:-${PYTHON:-python}}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
LOG=${GPU_CHECK_LOG:-/tmp/gpu_check}; mkdir -p "$LOG"
SLICE_ARGS=${SLICE_ARGS:-}
declare -A RES

step() {  # step NAME CMD... : run, keep the log, record ok/FAIL and seconds
  local name=$1; shift
  local t0=$SECONDS
  if "$@" >"$LOG/$name.log" 2>&1; then RES[$name]="ok   $((SECONDS - t0))s"
  else RES[$name]="FAIL $((SECONDS - t0))s (see $LOG/$name.log)"; tail -30 "$LOG/$name.log"; fi
}

if [[ $DRY == 1 ]]; then
  # shellcheck disable=SC2086
  step slice env DS_ACCELERATOR=cpu $PY -m hydra_dist.perf.slice_bench --dry-run --json "$LOG/slice.json" $SLICE_ARGS
  echo "== slice (dry run, CPU) =="; echo "slice ${RES[slice]}"; grep -E "^(slice|\|)" "$LOG/slice.log"
  [[ ${RES[slice]} == ok* ]] || exit 1
  exit 0
fi

$PY -c "import torch; assert torch.cuda.is_available(), 'no GPU visible'; print(torch.cuda.get_device_name())" || exit 1
step build    $PY setup.py build_ext --inplace
step tests    env HYDRA_REQUIRE_EXT=1 HYDRA_REQUIRE_CUDA_EXT=1 $PY -m pytest -q -p no:cacheprovider tests/ops
step bench_bf16 $PY benchmarks/bench_gsb.py --device cuda --dtype bfloat16
step bench_fp32 $PY benchmarks/bench_gsb.py --device cuda --dtype float32
$PY -c "import flash_attn" 2>/dev/null && FA="flash-attn $($PY -c 'import flash_attn; print(flash_attn.__version__)')" || FA="no flash-attn (reference attention)"
# shellcheck disable=SC2086
step slice    $PY -m hydra_dist.perf.slice_bench --json "$LOG/slice.json" $SLICE_ARGS

echo; echo "== GSB GPU check =="
printf '%-12s %s\n' step result
for s in build tests bench_bf16 bench_fp32 slice; do printf '%-12s %s\n' "$s" "${RES[$s]}"; done
grep -E "passed|failed" "$LOG/tests.log" | tail -1
for b in bench_bf16 bench_fp32; do echo "-- $b"; grep -vE "^(device|measured|-)" "$LOG/$b.log" | sed -n '1,5p'; grep -E "^(device|measured)" "$LOG/$b.log"; done
echo "-- training slice ($FA)"; grep -E "^(slice|\|)" "$LOG/slice.log"
for s in build tests bench_bf16 bench_fp32 slice; do [[ ${RES[$s]} == ok* ]] || exit 1; done
