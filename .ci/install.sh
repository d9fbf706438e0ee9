#!/usr/bin/env bash
# Install hydra_dist into a fresh virtual environment (default .venv), exactly as the README says.
# torch is pinned by constraints.txt so no dependency swaps it; --no-build-isolation lets the
# csrc/ extensions build against that torch instead of a fresh download.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HYDRA_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip setuptools wheel
"$VENV/bin/pip" install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1 ninja
DS_BUILD_OPS=0 "$VENV/bin/pip" install -q --no-build-isolation -c constraints.txt -e ".[dev]"
"$VENV/bin/python" -c "import hydra_dist, torch, deepspeed, megatron.core, streaming, mlflow; print('hydra_dist installed; torch', torch.__version__)"
