"""bench_mapek still drives the MAPE-K loop and its Knowledge store as they are, with the
samples the agent gives it, and its lossy case still opens the incidents it is there to
time. The bench has no size option: it runs whole (about 11 s on an idle 2-core machine,
nearly all of it the two 20 000-step timing loops)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from meshcore_testkit.loader import load_path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "tests" / "bench" / "bench_mapek.py"
STEPS = 20_000
CYCLE = 24  # the bench's lossy pattern: 4 steps at 50 % loss, then 20 clean


def test_the_samples_carry_hello_counts_as_the_agents_view_gives_them() -> None:
    # Without counts the Monitor reads the sensor's loss as it is (the batman backend)
    # and skips the loss window every native agent's step keeps: a cheaper step.
    links = load_path("bench_mapek", BENCH).Links()
    links(0.0)
    lossy, *clean = links(0.5)
    assert lossy.neighbor == "n0" and lossy.hellos == (150, 200), lossy
    assert all(c.hellos == (200, 200) and c.loss == 0.0 for c in clean), clean


def test_every_case_reports_and_the_lossy_link_opens_incidents() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        str(ROOT / p) for p in ("files/mesh_agent", "tests", "tools"))}
    res = subprocess.run([sys.executable, str(BENCH)],
                         capture_output=True, text=True, timeout=300, env=env, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    by: dict[tuple[str, str | None], dict[str, Any]] = {}
    for line in res.stdout.splitlines():
        r = json.loads(line)
        assert r["bench"] == "mapek" and isinstance(r["value"], float), r
        by[r["figure"], r.get("case")] = r
    assert set(by) == {("step_cpu", "quiet"), ("core_share", "quiet"),
                       ("step_cpu", "lossy_link"), ("loop_memory", None),
                       ("knowledge_write_cpu", None)}, sorted(by)
    quiet, lossy = by["step_cpu", "quiet"], by["step_cpu", "lossy_link"]
    for r in (quiet, lossy):
        assert r["unit"] == "us" and 0 < r["value"] < 50_000, r
    share = by["core_share", "quiet"]
    # the same per-step time, in seconds of one interval (floats: equal to rounding)
    assert share["value"] == pytest.approx(quiet["value"] / 1e6 / share["interval_s"] * 100,
                                           rel=1e-9), share
    cycles = -(-STEPS // CYCLE)
    assert cycles // 2 <= lossy["incidents"] <= cycles, lossy  # about one per cycle
    assert cycles // 2 <= lossy["flapping"] <= cycles, lossy  # n0 fails while lossy
    memory = by["loop_memory", None]
    assert memory["unit"] == "KiB" and 0 < memory["value"] < 10 * 1024, memory
    write = by["knowledge_write_cpu", None]
    assert write["writes"] > 0 and 0 < write["value"] < 100_000, write
    assert 0 < write["wall_us"] < 1_000_000, write
