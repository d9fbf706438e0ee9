#!/usr/bin/env bash
# Prepare, on a machine WITH network, the wheels benchmarks/gpu_check.sh needs on a bare GPU box
# (one that has only CUDA, torch, nvcc and the usual scientific packages: numpy, PyYAML, Pillow,
# safetensors, transformers, tqdm, psutil, msgpack, einops, xxhash, py-cpuinfo). The box has no
# network; these wheels travel with the repository (.whl/, ignored by git) and gpu_check.sh
# installs them with --no-index --no-deps into /tmp/site.
#
# Usage: bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]      (default 3.12, the box's Python)
# The versions are those of the .venv that .ci/install.sh makes (PIP=... to use another).
# Left out on purpose: mlflow (gpu_check runs with tracking.enabled=false), flash-attn (a ~250 MB
# CUDA build per torch/CUDA pair: bring one built for the box if you want the flash path;
# gpu_check falls back to SDPA and says so), streaming's cloud clients (local MDS only).
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
PIP=${PIP:-.venv/bin/pip}
OUT=${WHL_DIR:-.whl}
mkdir -p "$OUT"
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
# what the box lacks, at the versions of the local venv (what CI tested); a name missing there
# stops the script rather than fetching an untested version
NAMES=(deepspeed hjson pydantic pydantic-core annotated-types typing-inspection megatron-core
       mosaicml-streaming
       brotli python-snappy cramjam zstd catalogue)   # what `import streaming` imports at once
PKGS=()
for name in "${NAMES[@]}"; do
  v=$("$PIP" show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  [[ -n $v ]] || { echo "gpu_wheels: $name is not installed in $PIP's environment (run .ci/install.sh)"; exit 1; }
  PKGS+=("$name==$v")
done
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux_2_14_x86_64 --platform manylinux2014_x86_64)
for spec in "${PKGS[@]}"; do
  if [[ $spec == deepspeed==* ]]; then
    # PyPI has no deepspeed wheel, only its sdist: build a pure-Python one (ops JIT-built on the box)
    ls "$OUT"/deepspeed-"${spec#*==}"-*.whl >/dev/null 2>&1 || \
      DS_BUILD_OPS=0 "$PIP" wheel -q --no-deps --no-build-isolation -w "$OUT" "$spec"
  else
    "$PIP" download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
      "${PLAT[@]}" -d "$OUT" "$spec"
  fi
done
du -sh "$OUT"; ls "$OUT"
