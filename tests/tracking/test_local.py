"""No server: the SQLite default, batching limits and the spool's bookkeeping."""
from hydra_dist.tracking import MLflowTracker, resolve_uri
from hydra_dist.tracking.sender import merge
from hydra_dist.tracking.spool import Spool


def test_sqlite_default_in_run_folder(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HYDRA_MLFLOW_SPOOL_DIR", raising=False)
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    uri = resolve_uri("", run_dir)
    assert uri == f"sqlite:///{run_dir.resolve() / 'mlflow.db'}"
    tr = MLflowTracker(uri, "hydra-tiny", "tiny")
    assert tr.spool.folder == run_dir.resolve() / "mlflow_spool"
    tr.log_params({"train": {"steps": 3}})
    for step in range(1, 4):
        tr.log_metrics({"loss": 1.0 / step}, step)
    (run_dir / "config.yaml").write_text("train: {steps: 3}\n")
    tr.log_artifact(str(run_dir / "config.yaml"))
    assert tr.finish()["unsent_records"] == 0
    client = MlflowClient(uri)
    run = client.get_run(tr.run_id)
    assert run.data.params == {"train.steps": "3"} and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(tr.run_id, "loss")] == [1, 2, 3]
    # Artifacts stay in the run folder, not in ./mlruns of the working directory.
    assert (run_dir / "mlartifacts").is_dir()
    assert "config.yaml" in [a.path for a in client.list_artifacts(tr.run_id)]


def test_merge_respects_mlflow_batch_limits():
    recs = [{"op": "metrics", "run": "a", "m": [["k", 1.0, 0, i]] * 300} for i in range(7)]
    recs += [{"op": "params", "run": "a", "p": [["p", "v"]] * 60} for _ in range(3)]
    recs += [{"op": "metrics", "run": "b", "m": [["k", 1.0, 0, 0]]}]
    chunks = merge(recs)
    sizes = [(c[0]["op"], c[0]["run"], sum(len(r.get("m", r.get("p", []))) for r in c))
             for c in chunks]
    assert sizes == [("metrics", "a", 900), ("metrics", "a", 900), ("metrics", "a", 300),
                     ("params", "a", 60), ("params", "a", 60), ("params", "a", 60),
                     ("metrics", "b", 1)]


def test_spool_offset_survives_restart(tmp_path):
    sp = Spool(tmp_path)
    sp.append([{"op": "metrics", "run": "r", "m": [["loss", 1.0, 0, i]]} for i in range(5)])
    sp.mark_sent(2)
    again = Spool(tmp_path)
    assert again.unsent() == 3
    assert [r["m"][0][3] for r in again.read_unsent(10)] == [2, 3, 4]
    assert again.max_steps(["r"]) == {"loss": 4}
    again.mark_sent(3)
    assert again.unsent() == 0 and not sp.path.exists()
