"""A real full disk under the MLflow spool (a 64 KiB tmpfs in a private mount namespace) while
the server is down: the sender thread keeps the records it cannot spool in memory, says so in
one line, never dies; an image write fails with a line, not an exception; when the server comes
up every metric of every step arrives and the run ends FINISHED."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare (mount namespace)")
def test_spool_on_a_full_tmpfs_loses_nothing_and_the_sender_survives(tmp_path):
    spool, store = tmp_path / "spool", tmp_path / "store"
    spool.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {spool} || exit 90; "
              f"'{sys.executable}' '{HERE / 'spool_full_worker.py'}' '{spool}' '{store}'")
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=600)
    if res.returncode == 90:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    lines = "\n".join(out["lines"])
    assert f"MLflow spool {spool / 'spool.jsonl'} cannot be written (No space left on device)" \
        in lines, lines
    assert sum("cannot be written" in x for x in out["lines"]) == 1  # said once, not per record
    assert "samples_step00000060.png not written (No space left on device)" in lines, lines
    assert "MLflow sender stopped" not in lines
    assert out["worst_call_s"] < 0.05  # logging never waited on the full disk
    s = out["summary"]
    assert s["unsent_records"] == 0 and s["lost_in_memory"] == 0 and not s["sender_died"], s
    assert out["complete"], out["steps_m00"]
    assert out["status"] == "FINISHED"
