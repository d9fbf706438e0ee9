import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _megatron_single_process():
    """megatron parallel_state for one in-process rank (gloo, world 1); the environment that
    init_distributed sets is restored afterwards so later torchrun tests start clean."""
    saved = {k: os.environ.pop(k, None) for k in _DIST_ENV}
    from hydra_dist.distributed.init import init_distributed, shutdown
    layout = init_distributed(1, 1, 120, "gloo")
    try:
        yield layout
    finally:
        shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


single_process_mp = pytest.fixture(scope="module", name="single_process_mp")(_megatron_single_process)
megatron_tp1 = pytest.fixture(name="megatron_tp1")(_megatron_single_process)
