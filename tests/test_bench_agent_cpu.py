"""bench_agent_cpu still drives the agent's cores as they are (it replays them in one
process, so a changed core API breaks it silently until someone runs it: it did, when
``ComputeSchedule.changed`` gained its clock). A tiny mesh, every phase, no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_tiny_mesh_routes_and_every_phase_reports() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        str(ROOT / p) for p in ("files/mesh_agent", "tests", "tools"))}
    res = subprocess.run([sys.executable, str(ROOT / "tests/bench/bench_agent_cpu.py"),
                          "--topology", "grid:6", "--idle", "2", "--cut", "2"],
                         capture_output=True, text=True, timeout=300, env=env, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    (start,) = [r for r in rows if r["figure"] == "start_all_routed_virtual_s"]
    assert start["value"] is not None and start["nodes"] == 6, start
    totals = {r["phase"]: r for r in rows if r["figure"] == "cpu_by_part"}
    assert set(totals) == {"start", "idle", "cut"}, sorted(totals)
    (cut,) = [r for r in rows if r["figure"] == "events" and r["phase"] == "cut"]
    assert cut["links"].get("NeighborDown", 0) >= 2, cut  # both ends saw the cut
