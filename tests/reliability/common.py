"""Shared bits of the fault-injection tests: the tiny 2-rank run and how to read its results."""
from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

TINY = ["configs/tiny_cpu.yaml", "data.synthetic.num_samples=128", "parallel.timeout_s=30"]
LOSS_KEYS = ("loss", "ntp_loss", "fm_loss")


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def latest(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "latest").read_text().strip()


def log_time(out: str, pattern: str) -> datetime.datetime:
    """Time stamp of the first log line matching pattern (the CLI's `%(asctime)s` format)."""
    for line in out.splitlines():
        if re.search(pattern, line):
            m = re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", line)
            if m:
                return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
    raise AssertionError(f"no log line matches {pattern!r}")


def assert_same_losses(got: list[dict], want: list[dict]) -> None:
    import pytest
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for x, y in zip(got, want):
        for k in LOSS_KEYS:
            assert x[k] == pytest.approx(y[k], rel=1e-6, abs=1e-7), (x["step"], k)
