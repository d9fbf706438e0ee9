# shellcheck shell=bash
# Site environment for slurm/pretrain_*.sh, sourced on the batch node before the training
# step starts (srun passes the environment on to every task). Edit it for your cluster, or
# keep your own copy and point HYDRA_SITE_ENV at it (HYDRA_SITE_ENV=none skips it).
# Everything here is a default: a variable already set in the submitting shell wins.

# --- software ----------------------------------------------------------------------------
# Modules, e.g. HYDRA_MODULES="cuda/12.4 nccl/2.21 gcc/12"
if [ -n "${HYDRA_MODULES:-}" ] && command -v module >/dev/null 2>&1; then
  module purge
  # shellcheck disable=SC2086  # a list of modules
  module load ${HYDRA_MODULES}
fi
# Virtual environment made by .ci/install.sh (HYDRA_VENV=/path/to/.venv); otherwise the
# python on PATH in the submitting shell (sbatch exports it) is used.
if [ -n "${HYDRA_VENV:-}" ]; then
  # shellcheck disable=SC1091
  source "${HYDRA_VENV}/bin/activate"
fi

# --- NCCL / InfiniBand (H100 nodes with 8x NDR HCAs; check `ibstat` / `ibv_devices`) -------------
if [ "${HYDRA_DEVICE:-cuda}" != cpu ]; then
  export NCCL_IB_HCA="${NCCL_IB_HCA:-mlx5}"              # use the InfiniBand HCAs
  export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-^lo,docker0}"  # bootstrap over a real NIC
  export NCCL_IB_GID_INDEX="${NCCL_IB_GID_INDEX:-}"      # set to 3 for RoCE
  [ -n "$NCCL_IB_GID_INDEX" ] || unset NCCL_IB_GID_INDEX
  export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"                # INFO when debugging a hang
  export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"  # fail, don't hang
  export TORCH_NCCL_DUMP_ON_TIMEOUT="${TORCH_NCCL_DUMP_ON_TIMEOUT:-1}"
  export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"  # megatron TP overlap
fi
export GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-}"
[ -n "$GLOO_SOCKET_IFNAME" ] || unset GLOO_SOCKET_IFNAME

# --- caches on node-local or shared storage -----------------------------------------------
# JIT-built DeepSpeed ops are cached here; share it so 100 ranks don't build the same op.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-${HOME}/.cache/torch_extensions}"
export PYTHONUNBUFFERED=1
