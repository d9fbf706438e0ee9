"""The MLflow server is down for the whole run: training completes, the records wait in the
run folder's spool and are reported; replaying them later delivers the run. Secrets in the
environment (HF_TOKEN, *_API_KEY) reach neither the MLflow store nor any file or log line."""
from common import TINY, metrics
from launch import free_port, run_torchrun

SECRETS = {"HF_TOKEN": "secret123", "WANDB_API_KEY": "k3y-s3cr3t-value"}


def test_tracking_server_down_run_completes_spools_and_leaks_no_secret(tmp_path):
    run = tmp_path / "run"
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", **SECRETS}
    res = run_torchrun(2, TINY + ["train.steps=3", "checkpoint.every=3", f"output_dir={run}"],
                       timeout=400, env=env)
    assert res.returncode == 0, res.stdout[-4000:]
    assert (run / "FINISHED").is_file()
    assert [m["step"] for m in metrics(run)] == [1, 2, 3]
    assert "records unsent (kept in" in res.stdout, res.stdout[-3000:]
    assert '"finished": true' in res.stdout

    from hydra_dist.tracking.replay import replay
    from hydra_dist.tracking.spool import Spool
    spool = run / "mlflow_spool"
    assert Spool(spool).unsent() > 0
    db = run / "replayed.db"
    assert replay(f"sqlite:///{db}", spool, timeout_s=120) == 0
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    r = client.search_runs([client.get_experiment_by_name("hydra-tiny").experiment_id])[0]
    assert sorted(h.step for h in client.get_metric_history(r.info.run_id, "loss")) == [1, 2, 3]
    assert r.data.params["parallel.zero_stage"] == "3"
    assert r.info.status == "FINISHED"

    for value in SECRETS.values():
        assert value not in res.stdout
        for f in run.rglob("*"):
            if f.is_file():
                assert value.encode() not in f.read_bytes(), f
