"""On-disk spool for tracking records the server has not acknowledged.

Layout of a spool folder (normally `<run_dir>/mlflow_spool`):
  spool.jsonl    one record per line, in logging order (append-only)
  spool.offset   how many leading lines of spool.jsonl have been sent
  runs.json      runs created while the server was down: pending key -> experiment, name,
                 start time and, once created, the real MLflow run id
  rejected.jsonl records the server refused for good (bad value, deleted run), with the error
  files/         images and plots written by the tracker, kept until (and after) upload

Only one thread writes a spool folder (the tracker's sender thread; before it starts, the
tracker constructor). Replaying records twice is harmless: MLflow ignores a metric identical
in key, step, timestamp and value, and accepts a param re-logged with the same value.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional

log = logging.getLogger("hydra_dist.tracking")

PENDING_PREFIX = "pending-"


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Spool:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / "spool.jsonl"
        self.offset_path = self.folder / "spool.offset"
        self.runs_path = self.folder / "runs.json"
        self.rejected_path = self.folder / "rejected.jsonl"
        self.files_dir = self.folder / "files"
        self._total = self._count_lines()
        self._offset = int(self.offset_path.read_text()) if self.offset_path.exists() else 0
        self._offset = min(self._offset, self._total)

    def _count_lines(self) -> int:
        if not self.path.exists():
            return 0
        with self.path.open("rb") as f:
            return sum(1 for _ in f)

    # -- unsent records -------------------------------------------------------------------
    def unsent(self) -> int:
        return self._total - self._offset

    def append(self, records: List[dict]) -> None:
        if not records:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps(r) + "\n" for r in records).encode()
        # Unbuffered, so a failed write leaves nothing behind in a buffer for close() to flush.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)  # survives a node crash too, not only a process crash
            except OSError:
                # Disk full mid-write: cut the torn tail off (truncating frees space, so it
                # works on a full disk) so the next append starts on a line boundary.
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
        self._total += len(records)

    def read_unsent(self, limit: int) -> List[dict]:
        """Up to `limit` unsent records, oldest first."""
        out: List[dict] = []
        if not self.unsent():
            return out
        with self.path.open() as f:
            for i, line in enumerate(f):
                if i < self._offset:
                    continue
                if len(out) >= limit:
                    break
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    # A line torn by a crash mid-write; it cannot be recovered, so count it as
                    # handled and say so rather than block the spool forever.
                    log.warning("spool %s line %d is not valid JSON (torn write?); skipped",
                                self.path, i + 1)
                    out.append({"op": "torn"})
        return out

    def mark_sent(self, n: int) -> None:
        self._offset += n
        if self._offset >= self._total:
            # Everything delivered: start the next outage from an empty file.
            self.path.unlink(missing_ok=True)
            self.offset_path.unlink(missing_ok=True)
            self._offset = self._total = 0
        else:
            try:
                atomic_write_text(self.offset_path, str(self._offset))
            except OSError as e:
                # The records were delivered; an offset left behind only means they are sent
                # again after a restart, which MLflow ignores (module docstring).
                log.warning("spool offset %s not written (%s); delivered records may be "
                            "re-sent after a restart", self.offset_path, e.strerror or e)

    def reject(self, records: List[dict], error: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.rejected_path.open("a") as f:
            for r in records:
                f.write(json.dumps({"error": error, "record": r}) + "\n")

    def max_steps(self, run_keys: List[str]) -> Dict[str, int]:
        """Highest unsent step per metric key for the given run keys."""
        out: Dict[str, int] = {}
        for rec in self.read_unsent(self.unsent()):
            if rec.get("op") == "metrics" and rec.get("run") in run_keys:
                for key, _, _, step in rec["m"]:
                    out[key] = max(out.get(key, step), step)
        return out

    # -- runs created while offline -------------------------------------------------------
    def runs(self) -> Dict[str, dict]:
        return json.loads(self.runs_path.read_text()) if self.runs_path.exists() else {}

    def register_pending(self, key: str, experiment: str, run_name: str) -> None:
        runs = self.runs()
        runs[key] = {"experiment": experiment, "run_name": run_name,
                     "start_ms": int(time.time() * 1000), "run_id": None}
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.runs_path, json.dumps(runs, indent=1))

    def resolve(self, key: str) -> Optional[str]:
        """Real run id for a run key: the key itself unless it is a pending one."""
        if not key.startswith(PENDING_PREFIX):
            return key
        return self.runs().get(key, {}).get("run_id")

    def set_run_id(self, key: str, run_id: str) -> None:
        runs = self.runs()
        runs[key]["run_id"] = run_id
        atomic_write_text(self.runs_path, json.dumps(runs, indent=1))
