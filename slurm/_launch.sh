# shellcheck shell=bash
# Shared body of slurm/pretrain_unified.sh and slurm/pretrain_tokenizer.sh (sourced by them on
# the batch node; not a batch script itself). See docs/slurm.md.
#
# What it does, once per (re)start of the job:
#   1. sources the site file (HYDRA_SITE_ENV, default slurm/env.sh): modules, venv, NCCL/IB;
#   2. resolves the run folder from the config (hydra-pretrain --print-run-dir, in a one-task
#      step through the same srun arguments and task wrapper as training: inside the
#      container, so the batch host needs no Python), stops early if <run>/FINISHED exists,
#      and puts this start's logs in <run>/logs/job<ID>-restart<N>/;
#   3. rendezvous: MASTER_ADDR = first node of the allocation (or HYDRA_MASTER_ADDR),
#      MASTER_PORT derived from the job id and restart count (or HYDRA_MASTER_PORT);
#   4. one `srun`, one task per GPU (or per HYDRA_PROCS_PER_NODE on CPU nodes), each task the
#      training process itself (rank = SLURM_PROCID): no torchrun in between, so a signal
#      reaches the trainer instead of killing an agent;
#   5. traps SIGUSR1 (sent by --signal=B:USR1@T before the time limit) and SIGTERM, forwards
#      them to the srun step (srun relays them to every task: the trainer agrees on a step
#      boundary, saves a checkpoint and exits 0), waits for the step, and requeues the job
#      (scontrol requeue) unless the run is FINISHED or HYDRA_MAX_RESTARTS is reached.
#
# Environment knobs (all optional):
#   HYDRA_REPO             repository (default: $SLURM_SUBMIT_DIR)
#   HYDRA_SITE_ENV         site file to source (default: $HYDRA_REPO/slurm/env.sh; "none": skip)
#   HYDRA_PYTHON           python to run (default: python, after the site file)
#   HYDRA_ENTRY            module to run (default: hydra_dist.cli.pretrain)
#   HYDRA_DEVICE           cuda (default) | cpu (gloo, no GPUs; adds parallel.backend=gloo)
#   HYDRA_PROCS_PER_NODE   tasks per node (cuda: GPUs per node; cpu: 1)
#   HYDRA_GPUS_PER_NODE    GPUs per node for the step (default: $SLURM_GPUS_ON_NODE or 8)
#   HYDRA_CPUS_PER_TASK    cpus per task (default: node CPUs / tasks per node)
#   HYDRA_MASTER_ADDR      rendezvous address (default: first host of the allocation)
#   HYDRA_MASTER_PORT      rendezvous port (default: from the job id, 20000-59999)
#   HYDRA_RUN_DIR          run folder (default: output_dir of the resolved config)
#   HYDRA_MAX_RESTARTS     no requeue once SLURM_RESTART_COUNT reaches it (default 50)
#   HYDRA_REQUEUE_SIGNALS  signals after which the job requeues itself (default USR1; a plain
#                          SIGTERM comes from scancel or from SLURM preemption, which requeues
#                          by itself where PreemptMode=REQUEUE)
#   HYDRA_REQUEUE_ON_FAILURE  1: also requeue after a failed step (node/NCCL failure)
#   HYDRA_RESIGNAL_S       send the signal to the step again every N s while it runs (60)
#   HYDRA_SRUN_ARGS        extra srun arguments (word-split)
#   HYDRA_TASK_WRAPPER     command put before python in every task (word-split), e.g.
#                          "apptainer exec --nv img.sif" or "numactl --interleave=all"

HYDRA_LAUNCH_LOG=/dev/null
HYDRA_RESTART=0
SIGNALLED=""
SRUN_PID=""
FORWARDED_AT=0

hydra_log() {
  printf '%s [hydra job %s restart %s] %s\n' "$(date +%FT%T)" "${SLURM_JOB_ID:-}" "$HYDRA_RESTART" "$*" \
    | tee -a "$HYDRA_LAUNCH_LOG"
}

# Invoked by the traps below (shellcheck cannot see that).
# shellcheck disable=SC2317
hydra_on_signal() {
  local sig="$1"
  if [ -n "$SIGNALLED" ]; then hydra_log "SIG$sig again: already stopping"; return; fi
  SIGNALLED="$sig"
  if [ -n "$SRUN_PID" ] && kill -0 "$SRUN_PID" 2>/dev/null; then
    hydra_log "received SIG$sig: forwarding to the training step (srun pid $SRUN_PID)"
    hydra_forward
  else
    hydra_log "received SIG$sig before the training step started"
  fi
}

# srun relays the signal to every process of every task (slurmstepd signals the whole step).
hydra_forward() {
  FORWARDED_AT=$SECONDS
  kill -s "$SIGNALLED" "$SRUN_PID" 2>/dev/null || true
}

hydra_requeue() {
  if [ "$HYDRA_RESTART" -ge "$HYDRA_MAX_RESTARTS" ]; then
    hydra_log "restart count $HYDRA_RESTART reached HYDRA_MAX_RESTARTS=$HYDRA_MAX_RESTARTS: not requeueing"
    return 3
  fi
  hydra_log "run not finished: requeueing job $SLURM_JOB_ID (restart $((HYDRA_RESTART + 1)))"
  if ! scontrol requeue "$SLURM_JOB_ID"; then
    hydra_log "scontrol requeue failed (was the job submitted with --requeue?)"
    return 4
  fi
}

hydra_main() {
  set -euo pipefail
  local default_config="$1"; shift

  if [ -z "${SLURM_JOB_ID:-}" ]; then
    echo "error: submit this with sbatch (see docs/slurm.md), e.g. sbatch $0 CONFIG [key=value ...]" >&2
    return 2
  fi
  local repo="${HYDRA_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}"
  local restart="${SLURM_RESTART_COUNT:-0}"
  HYDRA_RESTART="$restart"

  # ---- signals: trapped from the start, acted on once the step runs ---------------------
  SIGNALLED=""
  SRUN_PID=""
  trap 'hydra_on_signal USR1' USR1
  trap 'hydra_on_signal TERM' TERM

  # ---- site environment -------------------------------------------------------------------
  local site="${HYDRA_SITE_ENV:-$repo/slurm/env.sh}"
  if [ "$site" != none ]; then
    [ -f "$site" ] || { echo "error: site file $site not found (set HYDRA_SITE_ENV)" >&2; return 2; }
    set +u  # module and activate scripts are rarely -u clean
    # shellcheck source=slurm/env.sh
    source "$site"
    set -u
  fi

  # ---- arguments -----------------------------------------------------------------------
  local config=""
  if [ $# -gt 0 ] && { [[ "$1" != *=* ]] || [ -e "$1" ]; }; then config="$1"; shift; fi
  config="${config:-$default_config}"
  if [ -z "$config" ]; then
    echo "usage: sbatch [sbatch options] $0 CONFIG [key=value ...]" >&2
    return 2
  fi
  local -a overrides=("$@")

  local py="${HYDRA_PYTHON:-python}"
  local entry="${HYDRA_ENTRY:-hydra_dist.cli.pretrain}"
  local device="${HYDRA_DEVICE:-cuda}"
  local nnodes="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
  local -a step_args=()
  local ppn
  case "$device" in
    cuda|gpu)
      local gpus="${HYDRA_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}"
      ppn="${HYDRA_PROCS_PER_NODE:-$gpus}"
      # Every task sees all the node's GPUs and picks cuda:LOCAL_RANK (no --gpus-per-task).
      step_args+=(--gpus-per-node="$gpus")
      ;;
    cpu)
      ppn="${HYDRA_PROCS_PER_NODE:-1}"
      export CUDA_VISIBLE_DEVICES="" DS_ACCELERATOR=cpu
      overrides=("parallel.backend=gloo" "${overrides[@]}")  # the caller's own overrides win
      ;;
    *) echo "error: HYDRA_DEVICE=$device: use cuda or cpu" >&2; return 2 ;;
  esac
  local world=$((nnodes * ppn))
  local cpt="${HYDRA_CPUS_PER_TASK:-$(( ${SLURM_CPUS_ON_NODE:-$ppn} / ppn ))}"
  [ "$cpt" -ge 1 ] || cpt=1
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cpt < 8 ? cpt : 8 ))}"

  # ---- run folder and logs ------------------------------------------------------------------
  # Resolved by a one-task step with the same srun arguments and task wrapper as training, so
  # it runs where training runs: inside the container (pyxis: --container-image=... in
  # HYDRA_SRUN_ARGS; apptainer: HYDRA_TASK_WRAPPER="apptainer exec --nv img.sif"). The batch
  # host needs no Python of ours. The step also checks the config's files (exit 2 names them).
  local run_dir="${HYDRA_RUN_DIR:-}"
  if [ -z "$run_dir" ]; then
    local resolved rc=0
    # shellcheck disable=SC2086  # HYDRA_SRUN_ARGS and HYDRA_TASK_WRAPPER are meant to be word-split
    resolved=$(WORLD_SIZE="$world" srun --nodes=1 --ntasks=1 --kill-on-bad-exit=1 ${HYDRA_SRUN_ARGS:-} \
      ${HYDRA_TASK_WRAPPER:-} "$py" -m "$entry" "$config" "${overrides[@]}" --print-run-dir) || rc=$?
    if [ "$rc" -eq 2 ]; then
      echo "error: the config does not resolve (above); not starting, not requeueing" >&2
      return 2
    elif [ "$rc" -ne 0 ]; then
      echo "error: the step resolving the config failed with status $rc before training (no" \
        "'$py' in the task's environment? check HYDRA_PYTHON, HYDRA_SRUN_ARGS," \
        "HYDRA_TASK_WRAPPER, or set HYDRA_RUN_DIR)" >&2
      return "$rc"
    fi
    run_dir=$(printf '%s\n' "$resolved" | tail -n 1)
  fi
  run_dir=$(realpath -m "$run_dir")
  local log_dir="$run_dir/logs/job${SLURM_JOB_ID}-restart${restart}"
  mkdir -p "$log_dir"
  HYDRA_LAUNCH_LOG="$log_dir/launcher.log"
  hydra_log "config $config ${overrides[*]}; run folder $run_dir; logs $log_dir"
  if [ -e "$run_dir/FINISHED" ]; then
    hydra_log "run already FINISHED: nothing to do"
    return 0
  fi

  # ---- rendezvous ---------------------------------------------------------------------------
  local first_node
  first_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  export MASTER_ADDR="${HYDRA_MASTER_ADDR:-$first_node}"
  export MASTER_PORT="${HYDRA_MASTER_PORT:-$(( 20000 + (SLURM_JOB_ID % 10000) * 4 + restart % 4 ))}"
  unset RANK WORLD_SIZE LOCAL_RANK  # ranks come from SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID
  hydra_log "nodes $SLURM_JOB_NODELIST ($nnodes), $ppn tasks/node, world $world, device $device, rendezvous $MASTER_ADDR:$MASTER_PORT"

  HYDRA_MAX_RESTARTS="${HYDRA_MAX_RESTARTS:-50}"
  if [ -n "$SIGNALLED" ]; then  # signalled during start-up: nothing to save yet
    hydra_requeue; return $?
  fi

  # ---- the training step ------------------------------------------------------------------
  # Each task starts with SIGUSR1 ignored (`trap "" USR1` is inherited through exec): the
  # trainer installs its own handler, while the processes it starts (DataLoader workers,
  # helpers), which SLURM signals as well, ignore it instead of dying and crashing the rank
  # before it can save. A rank still starting up ignores it too, hence the resend below.
  # shellcheck disable=SC2086  # HYDRA_SRUN_ARGS and HYDRA_TASK_WRAPPER are meant to be word-split
  srun --nodes="$nnodes" --ntasks="$world" --ntasks-per-node="$ppn" --cpus-per-task="$cpt" \
    --kill-on-bad-exit=1 --wait=120 "${step_args[@]}" ${HYDRA_SRUN_ARGS:-} \
    --output="$log_dir/rank%t.log" \
    bash -c 'trap "" USR1; exec "$@"' hydra-task \
    ${HYDRA_TASK_WRAPPER:-} "$py" -u -m "$entry" "$config" "${overrides[@]}" &
  SRUN_PID=$!
  [ -z "$SIGNALLED" ] || hydra_forward
  # Poll rather than block in `wait`, so that the traps run at once and a signal can be sent
  # again while the step runs (a rank still starting up ignores the first one, see above).
  local resend="${HYDRA_RESIGNAL_S:-60}"
  while kill -0 "$SRUN_PID" 2>/dev/null; do
    sleep 2 & wait $! 2>/dev/null || true
    if [ -n "$SIGNALLED" ] && [ $((SECONDS - FORWARDED_AT)) -ge "$resend" ] && kill -0 "$SRUN_PID" 2>/dev/null; then
      hydra_log "step still running ${resend}s after SIG$SIGNALLED: sending it again"
      hydra_forward
    fi
  done
  local rc=0
  wait "$SRUN_PID" || rc=$?
  hydra_log "training step ended with status $rc${SIGNALLED:+ after SIG$SIGNALLED}"
  tail -n 5 "$log_dir/rank0.log" 2>/dev/null | sed 's/^/  rank0| /' || true

  # ---- finished, requeue, or fail ---------------------------------------------------------
  if [ -e "$run_dir/FINISHED" ]; then
    hydra_log "run FINISHED ($(cat "$run_dir/FINISHED")): not requeueing"
    return 0
  fi
  if [ -n "$SIGNALLED" ] && [[ " ${HYDRA_REQUEUE_SIGNALS:-USR1} " == *" $SIGNALLED "* ]]; then
    hydra_requeue; return $?
  fi
  if [ "$rc" -ne 0 ] && [ "${HYDRA_REQUEUE_ON_FAILURE:-0}" = 1 ]; then
    hydra_requeue; return $?
  fi
  [ "$rc" -ne 0 ] && hydra_log "training failed (status $rc): see $log_dir/rank*.log"
  return "$rc"
}
