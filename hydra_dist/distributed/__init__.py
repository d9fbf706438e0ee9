"""Process groups (torchrun / SLURM), the parallel layout, megatron parallel_state, CPU compat."""
