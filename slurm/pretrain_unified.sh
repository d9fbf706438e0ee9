#!/usr/bin/env bash
# HYDRA unified pretraining on SLURM, multi-node H100 (8 GPUs a node), preemption-safe.
#
#   sbatch slurm/pretrain_unified.sh CONFIG [key=value ...]
#   sbatch --nodes=16 --time=48:00:00 --partition=p5 slurm/pretrain_unified.sh configs/... train.steps=...
#
# Every #SBATCH line below is a default: options on the sbatch command line win. On a time
# limit (or scancel -b -s USR1) the run checkpoints at the next step boundary and requeues
# itself until <run>/FINISHED exists. Knobs (HYDRA_*) and site set-up: slurm/_launch.sh,
# slurm/env.sh, docs/slurm.md. Submit from the repository root (or set HYDRA_REPO).
#
#SBATCH --job-name=hydra-unified
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

# The batch script runs from a copy in slurmd's spool: find the repository by the submit dir.
# shellcheck source=slurm/_launch.sh
source "${HYDRA_REPO:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}/slurm/_launch.sh"
hydra_main "${HYDRA_DEFAULT_CONFIG:-}" "$@"
exit $?
