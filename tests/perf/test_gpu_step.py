"""benchmarks/gpu_step.py (the GPU check's real-trainer step) runs end to end on CPU: it launches
the real trainer through torchrun, reads its metrics and sets them against the planner."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_step_dry_run_reports_trainer_against_planner(tmp_path):
    out = tmp_path / "step.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    res = subprocess.run([sys.executable, "benchmarks/gpu_step.py", "--dry-run", "--json", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=500)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    rep = json.loads(out.read_text())
    assert rep["steps"] == 3 and all(l > 0 for l in rep["losses"])
    assert rep["measured"]["mfu"] > 0 and rep["planner"]["memory_gb"] > 0
    assert rep["ratio"]["mfu"] == rep["measured"]["mfu"] / rep["planner"]["mfu"]
    assert "| MFU |" in res.stdout and "| peak memory GB |" in res.stdout
