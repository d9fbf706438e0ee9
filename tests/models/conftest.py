import pytest


@pytest.fixture(scope="module")
def single_process_mp():
    """megatron parallel_state for one in-process rank (gloo, world 1)."""
    from hydra_dist.distributed.init import init_distributed, shutdown
    layout = init_distributed(1, 1, 120, "gloo")
    yield layout
    shutdown()
