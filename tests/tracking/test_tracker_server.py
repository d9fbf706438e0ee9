"""MLflowTracker against a real `mlflow server` (one per module, see conftest.py)."""
import json

import numpy as np
import pytest
from PIL import Image

from hydra_dist.tracking import MLflowTracker
from hydra_dist.tracking.redact import PARAM_VALUE_MAX
from hydra_dist.tracking.sender import KIND, KIND_TAG


@pytest.fixture
def client(mlflow_server):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=mlflow_server.uri)


def steps_of(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_every_step_arrives(mlflow_server, client, tmp_path):
    tr = MLflowTracker(mlflow_server.uri, "every-step", "r", spool_dir=str(tmp_path / "spool"))
    keys = ["loss", "ntp_loss", "fm_loss", "grad_norm", "lr_group0"]
    for step in range(1, 501):
        tr.log_metrics({k: 1.0 / step + i for i, k in enumerate(keys)}, step)
    summary = tr.finish()
    assert summary["unsent_records"] == 0 and summary["rejected_records"] == 0
    assert summary["sent_metrics"] == 500 * len(keys)
    for k in keys:
        assert steps_of(client, tr.run_id, k) == list(range(1, 501))
    assert client.get_run(tr.run_id).info.status == "FINISHED"
    assert not (tmp_path / "spool" / "spool.jsonl").exists()


def test_many_params_long_values_and_secrets(mlflow_server, client, tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_TEST_API_TOKEN", "s3cr3t-value-xyz")
    params = {"model": {f"p{i}": i for i in range(250)},
              "long": "v" * 9000, "uri": "https://host/?t=s3cr3t-value-xyz"}
    tr = MLflowTracker(mlflow_server.uri, "params", "r", spool_dir=str(tmp_path / "spool"))
    tr.log_params(params)
    tr.set_tags({"note": "token s3cr3t-value-xyz", "host": "node1"})
    assert tr.finish()["unsent_records"] == 0
    run = client.get_run(tr.run_id)
    assert len(run.data.params) == 252
    assert run.data.params["model.p249"] == "249"
    long = run.data.params["long"]
    assert len(long) == PARAM_VALUE_MAX and "truncated 9000 chars" in long
    everything = json.dumps([run.data.params, run.data.tags])
    assert "s3cr3t-value-xyz" not in everything and "[REDACTED]" in run.data.params["uri"]
    assert run.data.tags["host"] == "node1"
    full = json.loads(open(client.download_artifacts(tr.run_id, "params/params.json",
                                                     str(tmp_path))).read())
    assert full["long"] == "v" * 9000 and "s3cr3t-value-xyz" not in json.dumps(full)


def test_resume_continues_same_run_without_repeats(mlflow_server, client, tmp_path):
    spool = str(tmp_path / "spool")
    tr1 = MLflowTracker(mlflow_server.uri, "resume", "r", spool_dir=spool)
    tr1.log_params({"lr": 0.1})
    for step in range(1, 31):
        tr1.log_metrics({"loss": 1.0 / step}, step)
    tr1.finish("KILLED")  # preempted at step 30; the last checkpoint was at step 20
    tr2 = MLflowTracker(mlflow_server.uri, "resume", "r-2", run_id=tr1.run_id, spool_dir=spool)
    assert tr2.run_id == tr1.run_id
    for step in range(21, 51):
        tr2.log_metrics({"loss": 1.0 / step}, step)
    summary = tr2.finish()
    assert summary["skipped_repeat_steps"] == 10 and summary["unsent_records"] == 0
    assert steps_of(client, tr1.run_id, "loss") == list(range(1, 51))
    run = client.get_run(tr1.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    assert len(client.search_runs([run.info.experiment_id])) == 1
    # opens in MLflow 3's "Model training" view, not the GenAI one
    assert client.get_experiment(run.info.experiment_id).tags[KIND_TAG] == KIND


def test_existing_experiment_gets_training_kind_unless_tagged(mlflow_server, client, tmp_path):
    """An experiment made elsewhere without a kind is tagged for the training view; one someone
    tagged keeps its kind."""
    bare = client.create_experiment("made-elsewhere")
    genai = client.create_experiment("genai-one", tags={KIND_TAG: "genai_development"})
    for name in ("made-elsewhere", "genai-one"):
        tr = MLflowTracker(mlflow_server.uri, name, "r", spool_dir=str(tmp_path / name))
        tr.log_metrics({"loss": 1.0}, 1)
        assert tr.finish()["unsent_records"] == 0
    assert client.get_experiment(bare).tags[KIND_TAG] == KIND
    assert client.get_experiment(genai).tags[KIND_TAG] == "genai_development"


def test_image_grid_and_loss_curve_artifacts(mlflow_server, client, tmp_path):
    tr = MLflowTracker(mlflow_server.uri, "images", "r", spool_dir=str(tmp_path / "spool"))
    rng = np.random.default_rng(0)
    tr.log_image_grid(rng.uniform(-1.3, 1.3, (4, 3, 16, 16)).astype(np.float32), "samples", 7)
    tr.log_image_grid(rng.integers(0, 255, (3, 1, 8, 8), dtype=np.uint8), "gray", 7, nrow=3)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 1 / s, "ntp_loss": 2 / s}) + "\n"
                               for s in range(1, 21)))
    tr.log_loss_curve(str(metrics))
    assert tr.finish()["unsent_records"] == 0
    names = sorted(a.path for a in client.list_artifacts(tr.run_id, "images"))
    assert names == ["images/gray_step00000007.png", "images/samples_step00000007.png"]
    local = client.download_artifacts(tr.run_id, "images/samples_step00000007.png", str(tmp_path))
    with Image.open(local) as im:
        im.verify()
    with Image.open(local) as im:
        assert im.format == "PNG" and im.size == (2 * 18 + 2, 2 * 18 + 2) and im.mode == "RGB"
    with Image.open(client.download_artifacts(tr.run_id, "images/gray_step00000007.png",
                                              str(tmp_path))) as im:
        assert im.size == (3 * 10 + 2, 12) and im.mode == "L"
    curve = client.download_artifacts(tr.run_id, "plots/loss_curve.png", str(tmp_path))
    with Image.open(curve) as im:
        assert im.format == "PNG" and im.size[0] > 100
