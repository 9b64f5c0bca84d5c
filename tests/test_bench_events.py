"""bench_events still drives the agent's event log as it is, against both baselines, and
its byte counts still come from the process's writes: 300 records each (not 5000)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from meshcore_testkit.loader import load_path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "tests" / "bench" / "bench_events.py"
IMPLS = ("event_log", "jsonl", "sqlite-full")


def test_every_impl_reports_latency_and_bytes_written() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        str(ROOT / p) for p in ("files/mesh_agent", "tests", "tools"))}
    res = subprocess.run([sys.executable, str(BENCH), "--records", "300"],
                         capture_output=True, text=True, timeout=120, env=env, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    by: dict[tuple[str, str], dict[str, Any]] = {}
    for line in res.stdout.splitlines():
        r = json.loads(line)
        assert r["bench"] == "events" and r["records"] == 300, r
        by[r["impl"], r["figure"]] = r
    assert set(by) == {(i, f) for i in IMPLS
                       for f in ("append_latency_us", "bytes_written_per_record")}, sorted(by)
    for impl in IMPLS:
        lat = by[impl, "append_latency_us"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] < 10_000_000, lat
        assert isinstance(lat["load1"], float), lat
    # The JSON-lines baseline writes exactly its lines: /proc/self/io is being read.
    record = load_path("bench_events", BENCH).record
    per_line = sum(len(json.dumps(record(i))) + 1 for i in range(300)) / 300
    assert abs(by["jsonl", "bytes_written_per_record"]["value"] - per_line) <= 1, per_line
    for impl in ("event_log", "sqlite-full"):  # pages, a WAL or a journal: more than a line
        written = by[impl, "bytes_written_per_record"]
        assert written["value"] > per_line, written
