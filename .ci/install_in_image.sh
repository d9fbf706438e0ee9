#!/usr/bin/env bash
# Install hydra_dist into an existing Python that already has torch (an NGC PyTorch container,
# a cluster module): never replace what the image brings. Every package already installed
# (torch, NCCL bindings, apex, flash-attn, transformer-engine, numpy, ...) is pinned to its
# installed version through a constraints file, so pip either fits our other dependencies
# around them or stops with the conflict named; it never swaps torch for a wheel from PyPI.
# csrc/ builds against that torch (--no-build-isolation). See docs/install.md.
#   bash .ci/install_in_image.sh [python]          (default: python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-python}"
"$PY" -c "import torch" 2>/dev/null || {
  echo "error: $PY has no torch; use .ci/install.sh for a fresh environment" >&2; exit 2; }
keep="$(mktemp -t hydra-keep-XXXX.txt)"
trap 'rm -f "$keep"' EXIT
# pip freeze's name==version for wheels; editable or direct-URL installs (NGC builds some from
# source) are pinned by name==version from their metadata instead.
"$PY" - "$keep" <<'PYEOF'
import sys
from importlib.metadata import distributions
pins = sorted({f"{d.metadata['Name']}=={d.version}" for d in distributions()
               if d.metadata["Name"] and d.metadata["Name"].lower() not in ("pip", "setuptools", "wheel", "hydra_dist", "hydra-dist")})
open(sys.argv[1], "w").write("\n".join(pins) + "\n")
print(f"keeping {len(pins)} installed packages, e.g. " +
      ", ".join(p for p in pins if p.split("==")[0].lower() in ("torch", "numpy", "apex", "flash_attn", "flash-attn")))
PYEOF
# The project's own pins apply only to what the image does not have (torch stays the image's).
grep -v -i -E '^(torch|torchvision)==' constraints.txt > "$keep.project"
DS_BUILD_OPS=0 "$PY" -m pip install -q --no-build-isolation -c "$keep" -c "$keep.project" -e ".[dev]"
rm -f "$keep.project"
"$PY" -c "import torch, hydra_dist, deepspeed, megatron.core, streaming, mlflow; from hydra_dist.ops import gsb_fused; assert gsb_fused.missing('cpu') is None, gsb_fused.missing('cpu'); print('hydra_dist installed in the image; torch', torch.__version__, '(kept); megatron-core', megatron.core.__version__)"
