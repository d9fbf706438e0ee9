"""Run inside a private mount namespace whose SPOOL folder is a tiny tmpfs (test_spool_full.py):
the MLflow server is down, the spool fills the tmpfs (a real ENOSPC), logging goes on; then the
server comes up and everything must arrive. Prints one JSON line of findings."""
import json
import logging
import sys
import time

import numpy as np
from mlflow.tracking import MlflowClient

from hydra_dist.tracking import MLflowTracker
from hydra_dist.tracking.local_server import LocalMlflowServer

KEYS = [f"m{k:02d}" for k in range(40)]
STEPS = 60


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def main(spool: str, store: str) -> None:
    lines = Lines()
    logging.getLogger("hydra_dist").addHandler(lines)
    logging.getLogger("hydra_dist").setLevel(logging.INFO)
    server = LocalMlflowServer(store)  # not started: nothing listens on its port yet
    tr = MLflowTracker(server.uri, "full", "r", spool_dir=spool, backoff_max_s=0.5,
                       batch_interval_s=0.05)
    worst = 0.0
    for step in range(1, STEPS + 1):
        t0 = time.perf_counter()
        tr.log_metrics({k: step + i / 100 for i, k in enumerate(KEYS)}, step)
        worst = max(worst, time.perf_counter() - t0)
        time.sleep(0.02)
    deadline = time.monotonic() + 30
    while not any("cannot be written" in x for x in lines.lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    # an image while the disk is full: an error line, never an exception into training
    noise = np.random.default_rng(0).integers(0, 256, (4, 3, 128, 128), dtype=np.uint8)
    tr.log_image_grid(noise, "samples", STEPS)  # 192 KiB of PNG that cannot compress
    server.start()
    summary = tr.finish(timeout_s=120)
    client = MlflowClient(server.uri)
    got = {k: sorted(m.step for m in client.get_metric_history(tr.run_id, k)) for k in KEYS}
    print(json.dumps({"summary": summary, "lines": lines.lines, "worst_call_s": worst,
                      "complete": all(v == list(range(1, STEPS + 1)) for v in got.values()),
                      "steps_m00": got["m00"], "status": client.get_run(tr.run_id).info.status}))
    server.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
