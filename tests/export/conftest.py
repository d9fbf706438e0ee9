import os

import pytest

_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def megatron_tp1():
    """World-size-1 gloo group + megatron parallel_state (TP=1, PP=1) for our layers; the
    environment variables init_distributed sets are restored afterwards (later torchrun tests)."""
    saved = {k: os.environ.get(k) for k in _KEYS}
    for k in _KEYS:
        os.environ.pop(k, None)
    from hydra_dist.distributed.init import init_distributed, shutdown
    layout = init_distributed(tp=1, pp=1, timeout_s=120, backend="gloo")
    try:
        yield layout
    finally:
        shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
