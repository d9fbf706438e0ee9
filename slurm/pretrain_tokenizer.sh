#!/usr/bin/env bash
# HYDRA-TOK tokenizer pretraining on SLURM: the same launcher as pretrain_unified.sh with a
# different default config (configs/tokenizer/stage1_foundation.yaml).
#
#   sbatch slurm/pretrain_tokenizer.sh [CONFIG] [key=value ...]
#
# The entry point is the same (hydra_dist.cli.pretrain): the config's `task: tokenizer` picks
# the tokenizer trainer. See slurm/pretrain_unified.sh and docs/slurm.md.
#
#SBATCH --job-name=hydra-tokenizer
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

# shellcheck source=slurm/_launch.sh
source "${HYDRA_REPO:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}/slurm/_launch.sh"
hydra_main "${HYDRA_DEFAULT_CONFIG:-configs/tokenizer/stage1_foundation.yaml}" "$@"
exit $?
