#!/usr/bin/env bash
# Stand-in for a container runtime in the SLURM tests (`apptainer exec IMAGE cmd ...`): IMAGE is
# a folder whose bin/ holds the project's Python. Only commands started through this wrapper
# see it; the batch step's own PATH does not, as on a cluster whose Python lives in the image.
image="$1"; shift
export PATH="$image/bin:$PATH"
exec "$@"
