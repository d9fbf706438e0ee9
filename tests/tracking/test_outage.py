"""Outages: the server down at start, and killed in the middle of logging."""
import time

from mlflow.tracking import MlflowClient

from hydra_dist.tracking import MLflowTracker

SLOW_CALL_S = 0.05  # a log call slower than this would stall a training step


def log_steps(tr, steps):
    worst = 0.0
    for step in steps:
        t0 = time.perf_counter()
        tr.log_metrics({"loss": 1.0 / step, "lr": 1e-3}, step)
        worst = max(worst, time.perf_counter() - t0)
    return worst


def history(uri, run_id, key="loss"):
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_server_killed_mid_logging_loses_nothing(server_factory, tmp_path):
    server = server_factory().start()
    tr = MLflowTracker(server.uri, "outage", "r", spool_dir=str(tmp_path / "spool"),
                       backoff_max_s=1.0)
    tr.log_params({"lr": 1e-3})
    assert log_steps(tr, range(1, 31)) < SLOW_CALL_S
    assert tr.flush(30)
    server.stop()
    assert log_steps(tr, range(31, 61)) < SLOW_CALL_S
    deadline = time.monotonic() + 30
    while not (tmp_path / "spool" / "spool.jsonl").exists():  # the sender noticed and spooled
        assert time.monotonic() < deadline
        time.sleep(0.1)
    server.start()  # same port, same store
    assert log_steps(tr, range(61, 91)) < SLOW_CALL_S
    summary = tr.finish(timeout_s=60)
    assert summary["unsent_records"] == 0 and summary["rejected_records"] == 0, summary
    assert history(server.uri, tr.run_id) == list(range(1, 91))
    assert history(server.uri, tr.run_id, "lr") == list(range(1, 91))
    assert MlflowClient(server.uri).get_run(tr.run_id).info.status == "FINISHED"
    assert not (tmp_path / "spool" / "spool.jsonl").exists()


def test_server_down_at_start_then_replayed_by_next_session(server_factory, tmp_path):
    server = server_factory()  # not started: nothing listens on its port
    spool = str(tmp_path / "spool")
    t0 = time.perf_counter()
    tr1 = MLflowTracker(server.uri, "late", "r", spool_dir=spool)
    assert time.perf_counter() - t0 < 5, "an unreachable server must not block the start"
    assert tr1.run_id.startswith("pending-")
    tr1.log_params({"lr": 1e-3, "model": {"layers": 2}})
    tr1.set_tags({"stage": "tiny"})
    assert log_steps(tr1, range(1, 21)) < SLOW_CALL_S
    summary = tr1.finish("KILLED", timeout_s=1)
    assert summary["unsent_records"] > 0 and summary["spool"].endswith("spool.jsonl")

    server.start()
    # The checkpoint held the placeholder id; the next session resumes with it.
    tr2 = MLflowTracker(server.uri, "late", "r", run_id=tr1.run_id, spool_dir=spool)
    log_steps(tr2, range(15, 41))  # resumed from a checkpoint at step 14
    summary = tr2.finish(timeout_s=60)
    assert summary["unsent_records"] == 0, summary
    run_id = tr2.run_id
    assert not run_id.startswith("pending-") and tr1.run_id == run_id
    assert history(server.uri, run_id) == list(range(1, 41))
    run = MlflowClient(server.uri).get_run(run_id)
    assert run.data.params == {"lr": "0.001", "model.layers": "2"}
    assert run.data.tags["stage"] == "tiny" and run.info.status == "FINISHED"
    assert run.info.run_name == "r"
