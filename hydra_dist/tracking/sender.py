"""The background thread that delivers tracking records to MLflow.

Records are plain JSON-able dicts (so the same object can go to the server or to the spool):
  {"op": "metrics",  "run": KEY, "m": [[key, value, timestamp_ms, step], ...]}
  {"op": "params",   "run": KEY, "p": [[key, value], ...]}
  {"op": "tags",     "run": KEY, "t": [[key, value], ...]}
  {"op": "artifact", "run": KEY, "path": LOCAL_FILE, "dir": ARTIFACT_DIR_OR_NULL}
  {"op": "status",   "run": KEY, "status": "RUNNING" | "FINISHED" | "FAILED" | "KILLED",
                     "end_ms": int | null}
KEY is an MLflow run id, or a pending key (see spool.py) when the run could not be created yet.

Two modes. Normal: take what is queued, merge consecutive records into log_batch calls within
MLflow's limits, send. Outage (the spool holds unsent records): move everything queued to the
spool first (so order is kept and a crash loses nothing), then try to drain the spool oldest
first, backing off exponentially between failed attempts.

Disk full (or any OSError writing the spool): the thread never dies of it. Records that could
not be spooled wait in memory, in order, after the spooled ones; the disk is retried before
each send and they go straight to the server when it answers. One log line says so, another
when the spool is writable again; finish() counts what was still only in memory. Anything else
that would end the thread is logged with the count of records it leaves behind.
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from typing import List, Optional

from .spool import Spool

log = logging.getLogger("hydra_dist.tracking")

METRICS_PER_BATCH = 1000   # MLflow MAX_METRICS_PER_BATCH
PARAMS_TAGS_PER_BATCH = 100  # MLflow MAX_PARAMS_TAGS_PER_BATCH
_ITEMS = {"metrics": ("m", METRICS_PER_BATCH), "params": ("p", PARAMS_TAGS_PER_BATCH),
          "tags": ("t", PARAMS_TAGS_PER_BATCH)}
# Server answers that will not change on retry; anything else (connection refused, timeout,
# 5xx, database locked, auth) is treated as an outage and retried from the spool.
PERMANENT_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST",
                   "RESOURCE_ALREADY_EXISTS", "INVALID_STATE", "BAD_REQUEST",
                   "MALFORMED_REQUEST"}
PERMANENT_TYPES = (TypeError, ValueError, KeyError, AttributeError, FileNotFoundError,
                   IsADirectoryError)
_STOP = object()
_env_lock = threading.RLock()  # re-entrant: run creation happens inside a send


@contextlib.contextmanager
def fail_fast_http(retries: int, timeout_s: float):
    """MLflow's HTTP client retries 7 times with exponential backoff and a 120 s timeout by
    default, which turns an outage into minutes of blocking. MLflow reads these settings from
    the environment at request time and has no per-client option, so we set them around our
    own calls only and restore them after. A value the user exported is left alone."""
    wanted = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
              "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(max(1, timeout_s)))}
    with _env_lock:
        set_here = [k for k in wanted if k not in os.environ]
        for k in set_here:
            os.environ[k] = wanted[k]
        try:
            yield
        finally:
            for k in set_here:
                os.environ.pop(k, None)


def is_permanent(exc: BaseException) -> bool:
    from mlflow.exceptions import MlflowException
    if isinstance(exc, MlflowException):
        return exc.error_code in PERMANENT_CODES
    return isinstance(exc, PERMANENT_TYPES)


# MLflow 3 opens an experiment without this tag in its GenAI view (traces, prompts); a training
# run's loss curves and sample grids live in the "Model training" view, which this kind selects.
# An experiment someone tagged otherwise keeps its kind.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"


def create_run(client, entry: dict, artifact_location: Optional[str] = None) -> str:
    """Create the run described by a runs.json entry (creating its experiment if needed,
    with `artifact_location`, or the store's default when None)."""
    from mlflow.exceptions import MlflowException
    exp = client.get_experiment_by_name(entry["experiment"])
    if exp is not None:
        exp_id = exp.experiment_id
        if KIND_TAG not in exp.tags:   # made by another tool, or before the tag existed
            client.set_experiment_tag(exp_id, KIND_TAG, KIND)
    else:
        try:
            exp_id = client.create_experiment(entry["experiment"], artifact_location,
                                              tags={KIND_TAG: KIND})
        except MlflowException as exc:  # another process created it in between
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp_id = client.get_experiment_by_name(entry["experiment"]).experiment_id
    return client.create_run(exp_id, start_time=entry["start_ms"],
                             run_name=entry["run_name"]).info.run_id


def merge(records: List[dict]) -> List[List[dict]]:
    """Group consecutive records of the same run and op into chunks that fit one request."""
    chunks: List[List[dict]] = []
    size = 0
    for r in records:
        op = r["op"]
        last = chunks[-1][0] if chunks else None
        if (op in _ITEMS and last is not None and last["op"] == op and last["run"] == r["run"]
                and size + len(r[_ITEMS[op][0]]) <= _ITEMS[op][1]):
            chunks[-1].append(r)
            size += len(r[_ITEMS[op][0]])
        else:
            chunks.append([r])
            size = len(r[_ITEMS[op][0]]) if op in _ITEMS else 0
    return chunks


class Sender(threading.Thread):
    def __init__(self, client, spool: Spool, http_retries: int = 0, http_timeout_s: float = 10.0,
                 backoff_s: float = 1.0, backoff_max_s: float = 30.0,
                 artifact_location: Optional[str] = None, batch_interval_s: float = 1.0):
        super().__init__(name="mlflow-sender", daemon=True)
        self.client = client
        self.spool = spool
        self.http = (http_retries, http_timeout_s)
        self.artifact_location = artifact_location
        self.batch_interval_s = batch_interval_s
        self._last_send = 0.0
        self.backoff = (backoff_s, backoff_max_s)
        self.q: "queue.Queue" = queue.Queue()
        self._wake = threading.Event()   # ends a backoff wait early (stop)
        self._hurry = threading.Event()  # ends a batching wait early (flush, stop)
        self._deadline: Optional[float] = None
        self._lock = threading.Lock()
        self.enqueued = 0
        self.handled = 0   # records sent, spooled or rejected
        self.sent_records = 0
        self.sent_metrics = 0
        self.rejected = 0
        self.in_outage = False
        self.last_error = ""
        self.overflow: List[dict] = []   # records the spool could not take (disk full)
        self.spool_error = ""
        self.died: Optional[BaseException] = None

    # -- called from the training thread --------------------------------------------------
    def put(self, record: dict) -> None:
        with self._lock:
            self.enqueued += 1
        self.q.put(record)

    def hurry(self) -> None:
        """Send what is queued now instead of at the end of the batch interval."""
        self._hurry.set()

    def idle(self) -> bool:
        with self._lock:
            return (self.handled == self.enqueued and self.spool.unsent() == 0
                    and not self.overflow)

    def stop(self, timeout_s: float) -> bool:
        """Deliver what is queued, retrying until the deadline, then exit; True if it exited."""
        self._deadline = time.monotonic() + timeout_s
        self.q.put(_STOP)
        self._wake.set()
        self._hurry.set()
        # One request may still be in flight when the deadline passes; it ends by its timeout.
        self.join(timeout_s + self.http[1] + 5)
        return not self.is_alive()

    # -- the thread -----------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - a dying sender must say so, once
            self.died = exc
            self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            log.error("MLflow sender stopped (%s): %d records spooled in %s, %d only in memory "
                      "and %d still queued will not be sent by this process; training goes on",
                      self.last_error, self.spool.unsent(), self.spool.path, len(self.overflow),
                      self.q.qsize())

    def _spool(self, records: List[dict]) -> None:
        """Append to the spool behind what is waiting in memory; if the disk refuses, keep
        everything in memory (in order) and say so once."""
        pending = self.overflow + records
        if not pending:
            return
        try:
            self.spool.append(pending)
        except OSError as exc:
            self.overflow = pending
            if not self.spool_error:
                log.error("MLflow spool %s cannot be written (%s): %d records kept in memory, "
                          "sent directly when the server answers; lost if this process dies "
                          "before that", self.spool.path, exc.strerror or exc, len(pending))
            self.spool_error = f"{type(exc).__name__}: {exc}"
            return
        if self.spool_error:
            log.warning("MLflow spool %s writable again: %d records moved from memory",
                        self.spool.path, len(self.overflow))
            self.spool_error = ""
        self.overflow = []

    def _loop(self) -> None:
        delay = self.backoff[0]
        stopping = False
        while True:
            if self.spool.unsent() or self.overflow:
                stopping |= self._spool_queued()
                if self._drain():
                    delay = self.backoff[0]
                    if stopping:  # the stop marker was queued last: nothing can follow it
                        return
                    continue
                if stopping and time.monotonic() >= (self._deadline or 0):
                    return
                if stopping:
                    delay = min(delay, max(0.0, self._deadline - time.monotonic()))
                self._wake.wait(delay)
                self._wake.clear()
                delay = min(delay * 2, self.backoff[1])
                continue
            try:
                first = self.q.get(timeout=0.5)
            except queue.Empty:
                continue
            if first is _STOP:
                return
            # Gather for up to batch_interval_s since the last send: one request per interval
            # instead of one per step keeps client and server CPU (often the same node's) low.
            # flush() and stop() set _hurry to cut the wait short.
            wait = self._last_send + self.batch_interval_s - time.monotonic()
            if wait > 0 and self._hurry.wait(wait):
                self._hurry.clear()
            self._last_send = time.monotonic()
            batch = [first]
            while len(batch) < 5000:
                try:
                    item = self.q.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._send_records(batch, from_spool=False)
            if stopping and not self.spool.unsent() and not self.overflow:
                return

    def _spool_queued(self) -> bool:
        """Move queued records to the spool; True if the stop marker was among them."""
        records, stop = [], False
        while True:
            try:
                item = self.q.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
            else:
                records.append(item)
        self._spool(records)
        self._count(handled=len(records))
        return stop

    def _drain(self) -> bool:
        """Send spooled records oldest first; True when the spool is empty."""
        while self.spool.unsent():
            records = self.spool.read_unsent(5000)
            if not self._send_records(records, from_spool=True):
                return False
        if self.overflow:
            self._spool([])  # the disk first: records queued later must stay behind these
        if self.overflow and not self.spool.unsent():
            batch, self.overflow = self.overflow, []
            if not self._send_records(batch, from_spool=False, counted=True):
                return False
        if self.spool.unsent():
            return self._drain()
        if self.in_outage:
            log.warning("MLflow reachable again: spool %s delivered", self.spool.path)
            self.in_outage = False
        return True

    def _send_records(self, records: List[dict], from_spool: bool, counted: bool = False) -> bool:
        """Send in order; on an outage spool the rest (when they came from memory) and return
        False. Records from the spool are marked sent chunk by chunk. counted: the records
        were already counted as handled (they come back from the in-memory overflow)."""
        chunks = merge(records)
        for i, chunk in enumerate(chunks):
            try:
                self._send_chunk(chunk)
                self._count(sent=chunk)
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                if is_permanent(exc):
                    log.error("MLflow refused %d %s record(s) for run %s: %s; kept in %s",
                              len(chunk), chunk[0]["op"], chunk[0].get("run"), exc,
                              self.spool.rejected_path)
                    try:
                        self.spool.reject(chunk, f"{type(exc).__name__}: {exc}")
                    except OSError as err:
                        log.error("MLflow: could not keep the %d refused record(s) in %s (%s)",
                                  len(chunk), self.spool.rejected_path, err.strerror or err)
                    with self._lock:
                        self.rejected += len(chunk)
                else:
                    self._enter_outage(exc)
                    if not from_spool:
                        rest = [r for c in chunks[i:] for r in c]
                        self._spool(rest)
                        self._count(handled=0 if counted else len(rest))
                    return False
            if from_spool:
                self.spool.mark_sent(len(chunk))
            elif not counted:
                self._count(handled=len(chunk))
        return True

    def _enter_outage(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
        if not self.in_outage:
            # Once per outage, not once per attempt: the log must stay readable.
            log.warning("MLflow unreachable or failing (%s); records go to %s and are "
                        "retried in the background", self.last_error, self.spool.path)
            self.in_outage = True

    def _count(self, handled: int = 0, sent: Optional[List[dict]] = None) -> None:
        with self._lock:
            self.handled += handled
            if sent:
                self.sent_records += len(sent)
                self.sent_metrics += sum(len(r["m"]) for r in sent if r["op"] == "metrics")

    def _run_id(self, key: str) -> str:
        run_id = self.spool.resolve(key)
        if run_id is None:
            entry = self.spool.runs().get(key)
            if entry is None:
                raise ValueError(f"run {key} was pending but {self.spool.runs_path} does not "
                                 f"describe it (spool folder removed or replaced?)")
            run_id = create_run(self.client, entry, self.artifact_location)
            self.spool.set_run_id(key, run_id)
            log.info("MLflow run %s created for %s (was pending)", run_id, key)
        return run_id

    def _send_chunk(self, chunk: List[dict]) -> None:
        from mlflow.entities import Metric, Param, RunTag
        op = chunk[0]["op"]
        if op == "torn":
            return
        with fail_fast_http(*self.http):
            run_id = self._run_id(chunk[0]["run"])
            if op == "metrics":
                self.client.log_batch(run_id, metrics=[
                    Metric(k, v, ts, step) for r in chunk for k, v, ts, step in r["m"]])
            elif op == "params":
                self.client.log_batch(run_id, params=[Param(k, v) for r in chunk for k, v in r["p"]])
            elif op == "tags":
                self.client.log_batch(run_id, tags=[RunTag(k, v) for r in chunk for k, v in r["t"]])
            elif op == "artifact":
                rec = chunk[0]
                self.client.log_artifact(run_id, rec["path"], rec.get("dir"))
            elif op == "status":
                rec = chunk[0]
                if rec["status"] == "RUNNING":
                    self.client.update_run(run_id, status="RUNNING")
                else:
                    self.client.set_terminated(run_id, rec["status"], rec.get("end_ms"))
            else:
                raise ValueError(f"unknown tracking record op {op!r}")
