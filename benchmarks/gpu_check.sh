#!/usr/bin/env bash
# On a machine with a GPU: build the CUDA GSB kernels, run their tests, run the benchmark,
# and print a short summary table. Usage: bash benchmarks/gpu_check.sh [python]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PYTHON:-python}}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
LOG=${GPU_CHECK_LOG:-/tmp/gpu_check}; mkdir -p "$LOG"
declare -A RES

step() {  # step NAME CMD... : run, keep the log, record ok/FAIL and seconds
  local name=$1; shift
  local t0=$SECONDS
  if "$@" >"$LOG/$name.log" 2>&1; then RES[$name]="ok   $((SECONDS - t0))s"
  else RES[$name]="FAIL $((SECONDS - t0))s (see $LOG/$name.log)"; tail -30 "$LOG/$name.log"; fi
}

$PY -c "import torch; assert torch.cuda.is_available(), 'no GPU visible'; print(torch.cuda.get_device_name())" || exit 1
step build    $PY setup.py build_ext --inplace
step tests    env HYDRA_REQUIRE_EXT=1 HYDRA_REQUIRE_CUDA_EXT=1 $PY -m pytest -q -p no:cacheprovider tests/ops
step bench_bf16 $PY benchmarks/bench_gsb.py --device cuda --dtype bfloat16
step bench_fp32 $PY benchmarks/bench_gsb.py --device cuda --dtype float32

echo; echo "== GSB GPU check =="
printf '%-12s %s\n' step result
for s in build tests bench_bf16 bench_fp32; do printf '%-12s %s\n' "$s" "${RES[$s]}"; done
grep -E "passed|failed" "$LOG/tests.log" | tail -1
for b in bench_bf16 bench_fp32; do echo "-- $b"; grep -vE "^(device|measured|-)" "$LOG/$b.log" | sed -n '1,5p'; grep -E "^(device|measured)" "$LOG/$b.log"; done
for s in build tests bench_bf16 bench_fp32; do [[ ${RES[$s]} == ok* ]] || exit 1; done
