"""Shared fixtures for the GSB op tests: which extensions are built."""
import pytest

from hydra_dist.ops import gsb_fused

CPU_MISSING = gsb_fused.missing("cpu")
CUDA_MISSING = gsb_fused.missing("cuda")


@pytest.fixture
def cpu_ext():
    """The CPU extension; the test skips (only) when it is not built."""
    if CPU_MISSING is not None:
        pytest.skip(f"CPU extension: {CPU_MISSING}")
    return gsb_fused._STATE["cpu"][0]
