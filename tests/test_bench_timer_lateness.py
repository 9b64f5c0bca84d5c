"""bench_timer_lateness runs its baseline and a hogged run, stops its hogs, and reports
one line per hog count (1 s runs here, not 20)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "tests" / "bench" / "bench_timer_lateness.py"


def test_one_line_per_hog_count_and_no_hog_left() -> None:
    res = subprocess.run([sys.executable, str(BENCH), "--hogs", "0", "1", "--seconds", "1"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["hogs"] for r in rows] == [0, 1]
    for r in rows:
        assert r["bench"] == "timer_lateness" and r["figure"] == "timer_late_ms", r
        assert 5 <= r["samples"] <= 10, r  # 100 ms sleeps over 1 s
        assert 0 <= r["p50"] <= r["p99"] and r["max"] >= r["p50"], r
    # The hogs were joined before the bench exited: none of its children is left.
    assert subprocess.run(["pgrep", "-f", str(BENCH)], capture_output=True,
                          check=False).returncode == 1


def test_a_hog_ends_by_itself_at_its_deadline() -> None:
    """A hog outlives no run: it stops at its deadline even if nobody terminates it (a
    killed bench; with --sched fifo it would otherwise hold a core for good)."""
    import time

    from meshcore_testkit.loader import load_path
    b = load_path("bench_timer_lateness", BENCH)
    t0 = time.monotonic()
    b.hog(t0 + 0.3, False)
    assert 0.3 <= time.monotonic() - t0 < 5.0
