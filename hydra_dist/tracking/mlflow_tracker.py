"""MLflow tracking. Only the rank that holds the loss creates an MLflowTracker; every other
rank gets a NullTracker. With no URI the store is an SQLite file inside the run folder."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

PARAM_VALUE_MAX = 6000   # MLflow's limit on one param value
BATCH_MAX = 100          # params per log_batch call


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, str]:
    out: Dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def resolve_uri(configured: str, run_dir: Path) -> str:
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


class NullTracker:
    run_id: Optional[str] = None

    def log_params(self, params: Dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: Dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str) -> None: ...
    def set_tags(self, tags: Dict[str, str]) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


class MLflowTracker:
    def __init__(self, uri: str, experiment: str, run_name: str, run_id: Optional[str] = None):
        from mlflow.tracking import MlflowClient
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        if run_id:  # resume continues the same run
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id

    def log_params(self, params: Dict[str, Any]) -> None:
        from mlflow.entities import Param
        flat = flatten(params)
        existing = self.client.get_run(self.run_id).data.params
        items = []
        for k, v in flat.items():
            if len(v) > PARAM_VALUE_MAX:  # keep it, visibly cut; the full config is an artifact
                v = v[: PARAM_VALUE_MAX - 20] + "...[truncated]"
            if k not in existing:  # params are immutable; a resumed run logs only new keys
                items.append(Param(k, v))
        for i in range(0, len(items), BATCH_MAX):
            self.client.log_batch(self.run_id, params=items[i:i + BATCH_MAX])

    def set_tags(self, tags: Dict[str, str]) -> None:
        from mlflow.entities import RunTag
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step)
                                                    for k, v in metrics.items()])

    def log_artifact(self, path: str) -> None:
        self.client.log_artifact(self.run_id, path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
