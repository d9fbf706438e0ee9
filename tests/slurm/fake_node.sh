#!/usr/bin/env bash
# HYDRA_TASK_WRAPPER for the SLURM tests: the fake nodes n1 and n2 are one machine, so give
# each task a private /dev/shm as a real node would have (mosaicml-streaming keys its shared
# memory by node; two "nodes" sharing /dev/shm collide). Needs root (mount namespace).
exec unshare --mount --propagation private sh -c 'mount -t tmpfs -o size=2g tmpfs /dev/shm && exec "$@"' fake-node "$@"
