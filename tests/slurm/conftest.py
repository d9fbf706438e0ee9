import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import LocalSlurm, missing_tools  # noqa: E402


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real SLURM (munged, slurmctld, slurmd n1 and n2) on this machine, torn down after."""
    miss = missing_tools()
    if miss:
        pytest.skip(f"SLURM tests need Debian's slurm-wlm and munge (missing: {', '.join(miss)}); "
                    "install them with: bash .ci/install_slurm.sh")
    if os.geteuid() != 0:
        pytest.skip("SLURM tests start slurmd/munged and need root")
    cluster = LocalSlurm().start()
    try:
        yield cluster
    finally:
        cluster.stop()
