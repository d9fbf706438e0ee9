"""Per-step cost of MLflow logging, measured in one run against a real local `mlflow server`.

    python benchmarks/bench_tracking.py [--steps 300] [--rounds 3] [--metrics 12]

Each step does a fixed amount of compute (a stand-in for a training step), then, depending on
the mode, logs `--metrics` values:
  none   no logging at all (the reference)
  async  MLflowTracker.log_metrics (queue; a background thread sends batches)
  sync   MlflowClient.log_batch per step (what the tracker did before: one HTTP round trip)
Modes are interleaved over rounds so machine load drifts hit all of them alike. The table shows
the median step time, the overhead per step over `none`, and the ratio to `none`.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from hydra_dist.tracking import MLflowTracker
from hydra_dist.tracking.local_server import LocalMlflowServer


def compute(a: np.ndarray) -> float:
    # Tens of ms: a small training step; short enough that logging overhead would show.
    return float((a @ a).sum())


def run_mode(mode: str, steps: int, n_metrics: int, a: np.ndarray, tracker, client, run_id,
             step0: int) -> tuple:
    step_s, call_s = [], []
    for i in range(steps):
        t0 = time.perf_counter()
        loss = compute(a)
        m = {f"m{j}": loss * (j + 1) for j in range(n_metrics)}
        t1 = time.perf_counter()
        if mode == "async":
            tracker.log_metrics(m, step0 + i)
        elif mode == "sync":
            from mlflow.entities import Metric
            ts = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, v, ts, step0 + i) for k, v in m.items()])
        t2 = time.perf_counter()
        step_s.append(t2 - t0)
        call_s.append(t2 - t1)
    return step_s, call_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="steps per mode per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--metrics", type=int, default=12, help="metric values logged per step")
    p.add_argument("--size", type=int, default=640, help="matrix size of the fake step")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from mlflow.tracking import MlflowClient
    a = np.random.default_rng(0).standard_normal((args.size, args.size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp, LocalMlflowServer(Path(tmp) / "server") as srv:
        client = MlflowClient(srv.uri)
        # The first request makes the server initialise its store, slowly on a loaded box;
        # do it with MLflow's default patient retries so the tracker measures steady state.
        exp_id = client.create_experiment("bench")
        tracker = MLflowTracker(srv.uri, "bench", "async", spool_dir=str(Path(tmp) / "spool"))
        sync_run = client.create_run(exp_id, run_name="sync").info.run_id
        modes = ["none", "async", "sync"]
        steps = {m: [] for m in modes}
        calls = {m: [] for m in modes}
        next_step = {m: 0 for m in modes}
        run_mode("none", 20, args.metrics, a, tracker, client, sync_run, 0)  # warm up
        for _ in range(args.rounds):
            for mode in modes:
                s, c = run_mode(mode, args.steps, args.metrics, a, tracker, client, sync_run,
                                next_step[mode])
                next_step[mode] += args.steps
                steps[mode] += s
                calls[mode] += c
        t0 = time.perf_counter()
        summary = tracker.finish()
        drain_s = time.perf_counter() - t0
        client.set_terminated(sync_run)
    base = statistics.median(steps["none"])
    print(f"\n{args.rounds} rounds x {args.steps} steps per mode, {args.metrics} metrics/step, "
          f"server {srv.uri}")
    print(f"{'mode':<6} {'step ms (p50)':>14} {'log call ms p50':>16} {'p99':>8} "
          f"{'overhead ms/step':>17} {'ratio vs none':>14}")
    for mode in modes:
        med = statistics.median(steps[mode])
        c = sorted(calls[mode])
        print(f"{mode:<6} {med * 1e3:>14.3f} {c[len(c) // 2] * 1e3:>16.4f} "
              f"{c[int(len(c) * 0.99)] * 1e3:>8.4f} {(med - base) * 1e3:>17.4f} "
              f"{med / base:>14.3f}")
    print(f"async tracker: {summary['sent_metrics']} metric values delivered, "
          f"{summary['unsent_records']} unsent; finish() took {drain_s:.2f}s")


if __name__ == "__main__":
    main()
