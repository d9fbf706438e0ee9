#!/usr/bin/env bash
# Debian packages for tests/slurm (a real one-machine SLURM: munged, slurmctld, two slurmd) and
# for linting slurm/*.sh. Needs root; about 15-30 s. Called from .ci/run.
set -euo pipefail
if command -v sbatch >/dev/null && command -v munged >/dev/null && command -v shellcheck >/dev/null; then
  echo "slurm-wlm, munge and shellcheck already installed"; exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm munge shellcheck util-linux >/dev/null
echo "installed: $(dpkg-query -W -f='slurm-wlm ${Version}' slurm-wlm), $(dpkg-query -W -f='munge ${Version}' munge), $(dpkg-query -W -f='shellcheck ${Version}' shellcheck)"
