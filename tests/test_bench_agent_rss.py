"""bench_agent_rss's attribution part (every step's import in a fresh interpreter) still
runs against the agent as it is: every step imports something new, and the total is the
sum. Part 1 (a netns lab at idle, then babeld) needs root, babeld and a minute per
topology, and is not run here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from meshcore_testkit.loader import load_path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "tests" / "bench" / "bench_agent_rss.py"


def test_the_attribution_steps_each_import_something_and_add_up() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        str(ROOT / p) for p in ("files/mesh_agent", "tests", "tools"))}
    res = subprocess.run([sys.executable, str(BENCH), "--attribution-only"],
                         capture_output=True, text=True, timeout=120, env=env, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    records: list[dict[str, Any]] = [json.loads(line) for line in res.stdout.splitlines()]
    assert all(r["bench"] == "agent_rss" and r["unit"] == "MB" for r in records), records
    *steps, total = records
    assert total["figure"] == "import_rss_total", total
    labels = [label for label, _ in load_path("bench_agent_rss", BENCH).ATTRIBUTION]
    assert [r["step"] for r in steps] == labels  # the agent's order, each once
    for r in steps:
        assert r["figure"] == "import_rss" and r["modules"] > 0, r
        assert -5 < r["anon_mb"] < 500 and -5 < r["file_mb"] < 500, r
    for part in ("anon_mb", "file_mb"):
        assert abs(total[part] - sum(r[part] for r in steps)) <= 0.05 * len(steps), part
    assert 5 < total["anon_mb"] < 1000, total
