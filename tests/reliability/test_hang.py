"""A hung collective: rank 1 stops before the loss-denominator all-reduce. Rank 0 must fail after
parallel.timeout_s with a message naming the rank, its layout position and the operation."""
import time

from common import TINY, log_time
from launch import run_torchrun


def test_hung_rank_times_out_with_rank_and_operation(tmp_path):
    t0 = time.monotonic()
    res = run_torchrun(2, TINY + ["train.steps=5", "parallel.timeout_s=20", f"output_dir={tmp_path / 'run'}"],
                       timeout=300, env={"HYDRA_FAULT": "hang_rank=1,at_step=3"})
    assert res.returncode != 0, res.stdout[-4000:]
    msg = "rank 0 (tp 0, pp 0, dp 0) failed during all_reduce of loss denominators"
    assert msg in res.stdout, res.stdout[-4000:]
    waited = (log_time(res.stdout, "failed during all_reduce") -
              log_time(res.stdout, "rank 1 hangs at the start of step 3")).total_seconds()
    assert 15 <= waited <= 20 + 40, waited
    assert time.monotonic() - t0 < 300
