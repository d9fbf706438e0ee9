"""A throwaway local `mlflow server` (SQLite store, proxied artifacts) for tests and benchmarks.

Started in its own session so that the server and its worker processes are stopped together
by process group; `stop()` kills abruptly on purpose (tests use it to simulate an outage).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalMlflowServer:
    def __init__(self, root: Path, port: int = 0, start_timeout_s: float = 240.0):
        # Generous timeout: it starts in ~8 s on an idle box, much later on a loaded one.
        self.root, self.port = Path(root), port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.start_timeout_s = start_timeout_s
        self.proc = None

    def start(self) -> "LocalMlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [str(Path(sys.executable).parent / "mlflow"), "server",
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "art"),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        log_path = self.root / "server.log"
        with log_path.open("a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited:\n{log_path.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {self.start_timeout_s}s; "
                           f"see {log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def __enter__(self) -> "LocalMlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
