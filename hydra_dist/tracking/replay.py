"""Send a spool folder's unsent records to an MLflow server, outside of training.

    python -m hydra_dist.tracking.replay --uri http://mlflow:5000 runs/<name>/mlflow_spool

Starting the next training session on the same spool folder does the same thing; this is for
runs that will not be resumed. Exit status 0 when the spool is empty afterwards.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .mlflow_tracker import local_artifact_location
from .sender import Sender
from .spool import Spool


def replay(uri: str, folder: Path, timeout_s: float) -> int:
    from mlflow.tracking import MlflowClient

    spool = Spool(folder)
    if not spool.unsent():
        print(f"{folder}: nothing to send")
        return 0
    client = MlflowClient(tracking_uri=uri)
    before = spool.unsent()
    sender = Sender(client, spool, backoff_max_s=5.0,
                    artifact_location=local_artifact_location(uri))
    sender.start()
    t0 = time.monotonic()
    sender.stop(timeout_s)
    print(f"{folder}: {before - spool.unsent()} of {before} records sent in "
          f"{time.monotonic() - t0:.1f}s, {spool.unsent()} left, {sender.rejected} rejected"
          + (f" (see {spool.rejected_path})" if sender.rejected else "")
          + (f"; last error: {sender.last_error}" if spool.unsent() else ""))
    return 0 if not spool.unsent() else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", required=True, help="MLflow tracking URI to send to")
    p.add_argument("--timeout", type=float, default=120.0, help="give up after this many s")
    p.add_argument("spool_dir", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return replay(args.uri, args.spool_dir, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
