"""The SLURM scripts parse, are shellcheck-clean, and refuse to run outside a SLURM job."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(str(p.relative_to(REPO)) for p in (REPO / "slurm").glob("*.sh")) + [
    "tests/slurm/fake_node.sh", ".ci/install_slurm.sh"]


def test_bash_syntax():
    for s in SCRIPTS:
        r = subprocess.run(["bash", "-n", s], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, (s, r.stderr)


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck not installed (bash .ci/install_slurm.sh installs it)")
def test_shellcheck_clean():
    r = subprocess.run(["shellcheck", "-x", *SCRIPTS], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("script", ["slurm/pretrain_unified.sh", "slurm/pretrain_tokenizer.sh"])
def test_refuses_to_run_outside_slurm(script):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    r = subprocess.run(["bash", script, "configs/tiny_cpu.yaml"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "submit this with sbatch" in r.stderr, r.stderr


def test_sbatch_defaults_are_multi_node_h100_and_preemption_safe():
    for script in ("slurm/pretrain_unified.sh", "slurm/pretrain_tokenizer.sh"):
        head = [l.split(None, 1)[1] for l in (REPO / script).read_text().splitlines()
                if l.startswith("#SBATCH")]
        for opt in ("--gpus-per-node=8", "--ntasks-per-node=8", "--exclusive", "--requeue",
                    "--signal=B:USR1@300", "--open-mode=append"):
            assert opt in head, (script, opt)
