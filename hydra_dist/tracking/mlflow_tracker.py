"""MLflow tracking. Only the rank that holds the loss creates an MLflowTracker; every other
rank gets a NullTracker. With no URI the store is an SQLite file inside the run folder.

Training never waits on the tracking server: every call below only queues a record (or writes
a small local file) and a background thread (sender.py) delivers it with MlflowClient.log_batch.
When the server is down or failing, records go to an on-disk spool (spool.py) and are re-sent
with backoff; a later tracker on the same spool folder replays them first. See docs/tracking.md.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from .images import DEFAULT_CURVE_KEYS, image_grid, plot_loss_curve, to_pil
from .redact import PARAM_VALUE_MAX, TAG_VALUE_MAX, flatten, prepare, redact
from .sender import (METRICS_PER_BATCH, PARAMS_TAGS_PER_BATCH, Sender, create_run,
                     fail_fast_http, is_permanent)
from .spool import PENDING_PREFIX, Spool

log = logging.getLogger("hydra_dist.tracking")

SPOOL_ENV = "HYDRA_MLFLOW_SPOOL_DIR"


def resolve_uri(configured: str, run_dir: Path) -> str:
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def default_spool_dir(uri: str, experiment: str) -> Path:
    """Where unsent records wait when the caller names no folder. It must be the same folder
    on resume, so it is derived from stable things only (never the run name, which carries
    the SLURM job id): $HYDRA_MLFLOW_SPOOL_DIR, else beside an SQLite store (the run folder
    for the default URI), else ./mlflow_spool/<experiment>."""
    if os.environ.get(SPOOL_ENV):
        return Path(os.environ[SPOOL_ENV])
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent / "mlflow_spool"
    return Path.cwd() / "mlflow_spool" / re.sub(r"[^\w.-]", "_", experiment)


def local_artifact_location(uri: str) -> Optional[str]:
    """For an SQLite store, artifacts live beside it (MLflow would otherwise use ./mlruns
    of whatever the working directory is); a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


class NullTracker:
    run_id: Optional[str] = None

    def log_params(self, params: Dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: Dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None: ...
    def log_image(self, image: Any, name: str, step: Optional[int] = None) -> None: ...
    def log_image_grid(self, images: Any, name: str, step: Optional[int] = None,
                       nrow: Optional[int] = None) -> None: ...
    def log_figure(self, fig: Any, name: str) -> None: ...
    def log_loss_curve(self, metrics_jsonl: str, keys: Sequence[str] = DEFAULT_CURVE_KEYS,
                       name: str = "loss_curve") -> None: ...
    def set_tags(self, tags: Dict[str, str]) -> None: ...
    def flush(self, timeout_s: Optional[float] = None) -> bool: return True
    def finish(self, status: str = "FINISHED", timeout_s: Optional[float] = None) -> dict:
        return {}


class MLflowTracker:
    """Asynchronous, outage-tolerant MLflow run.

    run_id: pass the id from a checkpoint to continue that run (its status goes back to
    RUNNING; metric steps at or below what the run already holds are not re-logged, so a
    resume from an older checkpoint leaves no repeated steps). If the server cannot be reached
    at start, `run_id` is a placeholder `pending-<hex>`; the run is created when the server
    answers, and the placeholder keeps working as a run id for resume (runs.json maps it).
    """

    def __init__(self, uri: str, experiment: str, run_name: str, run_id: Optional[str] = None,
                 *, spool_dir: Optional[str] = None, flush_timeout_s: float = 30.0,
                 http_timeout_s: float = 10.0, http_retries: int = 0,
                 backoff_max_s: float = 30.0, batch_interval_s: float = 1.0):
        from mlflow.tracking import MlflowClient
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.flush_timeout_s = flush_timeout_s
        self._http = (http_retries, http_timeout_s)
        self.spool = Spool(Path(spool_dir) if spool_dir else default_spool_dir(uri, experiment))
        self.client = MlflowClient(tracking_uri=uri)
        self._last_step: Dict[str, int] = {}
        self._skipped = 0
        self._params_full: Dict[str, str] = {}
        self._summary: Optional[dict] = None
        if self.spool.unsent():
            log.warning("%d unsent tracking records from an earlier session in %s; "
                        "sending them first", self.spool.unsent(), self.spool.path)
        if run_id and run_id.startswith(PENDING_PREFIX) and run_id not in self.spool.runs():
            raise ValueError(f"run id {run_id} is a placeholder from a session that could not "
                             f"reach MLflow, but {self.spool.runs_path} does not know it: pass "
                             f"the same spool_dir as that session")
        self._key = run_id or self._create_now() or self._pending()
        self._sender = Sender(self.client, self.spool, http_retries,
                              http_timeout_s, backoff_max_s=backoff_max_s,
                              artifact_location=local_artifact_location(uri),
                              batch_interval_s=batch_interval_s)
        if run_id:  # resume continues the same run
            self._last_step = self._logged_steps()
            self._sender.put({"op": "status", "run": self._key, "status": "RUNNING",
                              "end_ms": None})
        self._sender.start()
        # A crash that skips finish() still gets its queue delivered or spooled.
        atexit.register(self._at_exit)
        log.info("MLflow tracking to %s, run %s, spool %s", uri, self.run_id, self.spool.folder)

    # -- run identity ---------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.spool.resolve(self._key) or self._key

    def _create_now(self) -> Optional[str]:
        entry = {"experiment": self.experiment, "run_name": self.run_name,
                 "start_ms": int(time.time() * 1000)}
        try:
            with fail_fast_http(*self._http):
                return create_run(self.client, entry, local_artifact_location(self.uri))
        except Exception as exc:  # noqa: BLE001 - classified: config errors raise, outages spool
            if is_permanent(exc):
                raise
            log.warning("MLflow at %s unreachable at start (%s: %s); the run is created when "
                        "it answers, until then records are kept in %s", self.uri,
                        type(exc).__name__, str(exc)[:200], self.spool.folder)
            return None

    def _pending(self) -> str:
        key = PENDING_PREFIX + uuid.uuid4().hex
        self.spool.register_pending(key, self.experiment, self.run_name)
        return key

    def _logged_steps(self) -> Dict[str, int]:
        """Highest step per metric already in the run (on the server or still spooled)."""
        steps: Dict[str, int] = {}
        run_id = self.spool.resolve(self._key)
        if run_id:
            try:
                with fail_fast_http(*self._http):
                    run = self.client.get_run(run_id)
                # RunData exposes only values publicly; the Metric objects carry the step of
                # the latest value, which is the highest step (MLflow's latest_metrics rule).
                steps = {m.key: m.step for m in run.data._metric_objs}
            except Exception as exc:  # noqa: BLE001 - resume must not fail on an outage
                log.warning("could not read run %s to continue its steps (%s); a resume from "
                            "an older checkpoint may repeat steps", run_id, exc)
        keys = [self._key] + [k for k, v in self.spool.runs().items()
                              if run_id and v.get("run_id") == run_id]
        for k, s in self.spool.max_steps(keys).items():
            steps[k] = max(steps.get(k, s), s)
        return steps

    # -- logging (all of it only queues) --------------------------------------------------
    def _put_items(self, op: str, field: str, items: list, per_batch: int) -> None:
        for i in range(0, len(items), per_batch):
            self._sender.put({"op": op, "run": self._key, field: items[i:i + per_batch]})

    def log_params(self, params: Dict[str, Any]) -> None:
        flat = flatten(params)
        values, counts = prepare(flat, PARAM_VALUE_MAX)
        # The complete (redacted) values as an artifact, so truncation loses nothing.
        full, _ = redact(flat)
        path = self._local_file("params", "params.json")
        # Several log_params calls of this session share one artifact.
        self._params_full.update(full)
        if self._write(path, lambda p: p.write_text(json.dumps(self._params_full, indent=1,
                                                                sort_keys=True))):
            self.log_artifact(str(path), "params")
        if counts["redacted"] or counts["truncated"]:
            log.info("MLflow params: %d redacted as secrets, %d truncated to %d chars (full "
                     "values in artifact params/params.json)", counts["redacted"],
                     counts["truncated"], PARAM_VALUE_MAX)
        self._put_items("params", "p", sorted(values.items()), PARAMS_TAGS_PER_BATCH)

    def set_tags(self, tags: Dict[str, Any]) -> None:
        values, counts = prepare(tags, TAG_VALUE_MAX)
        if counts["redacted"] or counts["truncated"]:
            log.info("MLflow tags: %d redacted as secrets, %d truncated", counts["redacted"],
                     counts["truncated"])
        self._put_items("tags", "t", sorted(values.items()), PARAMS_TAGS_PER_BATCH)

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        step = int(step)
        items = []
        for k, v in metrics.items():
            if step <= self._last_step.get(k, -1):
                self._note_skip(k, step)
                continue
            self._last_step[k] = step
            items.append([k, float(v), ts, step])
        if items:
            self._put_items("metrics", "m", items, METRICS_PER_BATCH)

    def _note_skip(self, key: str, step: int) -> None:
        if not self._skipped:
            log.info("MLflow run %s already holds %s up to step %d (resumed from an older "
                     "checkpoint?); steps up to there are not logged again, so the curve has "
                     "no repeats", self.run_id, key, self._last_step[key])
        self._skipped += 1

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        """The file is uploaded later from the background thread: leave it in place."""
        self._sender.put({"op": "artifact", "run": self._key,
                          "path": str(Path(path).resolve()), "dir": artifact_path})

    def _local_file(self, sub: str, filename: str) -> Path:
        folder = self.spool.files_dir / sub
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # _write reports it, with the file it was for
        return folder / filename

    def _write(self, path: Path, write) -> bool:
        """Write a file for upload in the training thread; a full disk costs the artifact (one
        line, with the file), never the training step."""
        try:
            write(path)
            return True
        except OSError as e:
            log.error("MLflow: %s not written (%s); not uploaded", path, e.strerror or e)
            path.unlink(missing_ok=True)
            return False

    @staticmethod
    def _stem(name: str, step: Optional[int]) -> str:
        safe = re.sub(r"[^\w.-]", "_", name)
        return safe if step is None else f"{safe}_step{int(step):08d}"

    def log_image_grid(self, images: Any, name: str, step: Optional[int] = None,
                       nrow: Optional[int] = None) -> Path:
        """images: NCHW, float in [-1, 1] or uint8 -> one PNG grid under artifacts images/."""
        path = self._local_file("images", self._stem(name, step) + ".png")
        if self._write(path, lambda p: image_grid(images, nrow=nrow).save(p, format="PNG")):
            self.log_artifact(str(path), "images")
        return path

    def log_image(self, image: Any, name: str, step: Optional[int] = None) -> Path:
        path = self._local_file("images", self._stem(name, step) + ".png")
        if self._write(path, lambda p: to_pil(image).save(p, format="PNG")):
            self.log_artifact(str(path), "images")
        return path

    def log_figure(self, fig: Any, name: str) -> Path:
        path = self._local_file("plots", self._stem(name, None) + ".png")
        if self._write(path, fig.savefig):
            self.log_artifact(str(path), "plots")
        return path

    def log_loss_curve(self, metrics_jsonl: str, keys: Sequence[str] = DEFAULT_CURVE_KEYS,
                       name: str = "loss_curve") -> Path:
        """Plot the run's metrics.jsonl (one JSON object with `step` per line) as a PNG."""
        path = self._local_file("plots", self._stem(name, None) + ".png")
        if self._write(path, lambda p: plot_loss_curve(Path(metrics_jsonl), p, keys)):
            self.log_artifact(str(path), "plots")
        return path

    # -- end of run -----------------------------------------------------------------------
    def flush(self, timeout_s: Optional[float] = None) -> bool:
        """Wait until everything queued so far is delivered; False on timeout (an outage)."""
        deadline = time.monotonic() + (self.flush_timeout_s if timeout_s is None else timeout_s)
        while not self._sender.idle():
            if time.monotonic() >= deadline:
                return False
            self._sender.hurry()
            time.sleep(0.02)
        return True

    def finish(self, status: str = "FINISHED", timeout_s: Optional[float] = None) -> dict:
        """End the run: deliver what is queued (waiting at most timeout_s, default
        flush_timeout_s), mark the run `status`, and say what could not be sent."""
        if self._summary is not None:
            return self._summary
        atexit.unregister(self._at_exit)
        self._sender.put({"op": "status", "run": self._key, "status": status,
                          "end_ms": int(time.time() * 1000)})
        exited = self._sender.stop(self.flush_timeout_s if timeout_s is None else timeout_s)
        s = self._sender
        in_memory = len(s.overflow) + (0 if exited else s.enqueued - s.handled)
        unsent = self.spool.unsent() + in_memory
        self._summary = {
            "run_id": self.run_id, "status": status, "sent_records": s.sent_records,
            "sent_metrics": s.sent_metrics, "unsent_records": unsent,
            "lost_in_memory": in_memory, "rejected_records": s.rejected,
            "skipped_repeat_steps": self._skipped,
            "spool": str(self.spool.path) if self.spool.unsent() else None,
            "rejected_file": str(self.spool.rejected_path) if s.rejected else None,
            "last_error": s.last_error or s.spool_error or None,
            "sender_died": f"{type(s.died).__name__}: {s.died}" if s.died else None}
        if unsent or s.rejected:
            log.warning("MLflow: %d records unsent (kept in %s; sent by the next tracker on "
                        "that folder, or now: python -m hydra_dist.tracking.replay --uri %s "
                        "%s), %d rejected (%s), %d never reached the spool; last error: %s",
                        unsent - in_memory, self.spool.path, self.uri, self.spool.folder,
                        s.rejected, self.spool.rejected_path, in_memory, s.last_error)
        else:
            log.info("MLflow run %s %s: %d records (%d metric values) sent", self.run_id,
                     status, s.sent_records, s.sent_metrics)
        return self._summary

    def _at_exit(self) -> None:
        self.finish("FAILED", timeout_s=min(self.flush_timeout_s, 10.0))
