"""meshcore_tools.molecule_run (make molecule): scenarios a few at a time, their logs,
the report, and what a failure stops. A stand-in ``molecule`` (a script that sleeps and
exits as its scenario says) takes the place of the real one, which the molecule phase of
make test runs for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE = """#!/bin/sh
# molecule <verb> -s <scenario>: sleep and exit as molecule/<scenario>/behaviour says
verb=$1; scenario=$3
echo "$verb $scenario" >> "$CALLS"
[ "$verb" = test ] || exit 0
read secs rc < "molecule/$scenario/behaviour"
echo "running $scenario"
sleep "$secs"
echo "done $scenario rc=$rc"
exit "$rc"
"""


def project(tmp_path: Path, scenarios: dict[str, tuple[float, int]]) -> Path:
    for name, (secs, rc) in scenarios.items():
        d = tmp_path / "molecule" / name
        d.mkdir(parents=True)
        (d / "molecule.yml").write_text("---\n")
        (d / "behaviour").write_text(f"{secs} {rc}\n")
    fake = tmp_path / "molecule-fake"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    return fake


def run(tmp_path: Path, fake: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tools"), "CALLS": str(tmp_path / "calls")}
    return subprocess.run(
        [sys.executable, "-m", "meshcore_tools.molecule_run", "--molecule", str(fake), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_two_at_a_time_overlap_and_report_each_scenario(tmp_path: Path) -> None:
    fake = project(tmp_path, {"a": (1.0, 0), "b": (1.0, 0), "c": (1.0, 0), "d": (1.0, 0)})
    t0 = time.monotonic()
    proc = run(tmp_path, fake, "--jobs", "2", "a", "b", "c", "d")
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert wall < 3.8  # four 1 s scenarios, two at a time (one at a time: over 4 s)
    report = json.loads((tmp_path / "build/molecule/report.json").read_text())
    assert report["ok"] and report["jobs"] == 2 and report["not_run"] == []
    assert sorted(s["scenario"] for s in report["scenarios"]) == ["a", "b", "c", "d"]
    assert all(s["ok"] and s["seconds"] >= 1.0 for s in report["scenarios"])
    assert "running a" in (tmp_path / "build/molecule/a.log").read_text()
    assert "wall" in proc.stdout and "jobs=2" in proc.stdout
    assert "running a" not in proc.stdout  # the logs stay in their files when all pass


def test_after_a_failure_no_scenario_starts_and_its_log_is_printed(tmp_path: Path) -> None:
    fake = project(tmp_path, {"bad": (0.2, 3), "slow": (1.0, 0), "later": (0.1, 0)})
    proc = run(tmp_path, fake, "--jobs", "2", "bad", "slow", "later")
    assert proc.returncode == 1
    report = json.loads((tmp_path / "build/molecule/report.json").read_text())
    by = {s["scenario"]: s for s in report["scenarios"]}
    assert by["bad"]["rc"] == 3 and not by["bad"]["ok"]
    assert by["slow"]["ok"]  # already running: it finishes
    assert report["not_run"] == ["later"] and not report["ok"]
    assert "=== log of the failed scenario bad" in proc.stdout
    assert "done bad rc=3" in proc.stdout
    assert "not run after the failure: later" in proc.stdout


def test_one_at_a_time_streams_the_output(tmp_path: Path) -> None:
    fake = project(tmp_path, {"a": (0.1, 0), "b": (0.1, 0)})
    proc = run(tmp_path, fake, "--jobs", "1", "a", "b")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.index("running a") < proc.stdout.index("running b")


def test_an_unknown_scenario_is_refused_before_anything_runs(tmp_path: Path) -> None:
    fake = project(tmp_path, {"a": (0.1, 0)})
    proc = run(tmp_path, fake, "a", "nope")
    assert proc.returncode == 2 and "no such scenario: nope" in proc.stderr
    assert not (tmp_path / "calls").exists()


@pytest.mark.parametrize("signum", [2, 15])
def test_an_interrupt_stops_the_running_scenarios_and_destroys_them(
        tmp_path: Path, signum: int) -> None:
    fake = project(tmp_path, {"a": (30.0, 0), "b": (30.0, 0), "c": (0.1, 0)})
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tools"), "CALLS": str(tmp_path / "calls")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshcore_tools.molecule_run", "--molecule", str(fake),
         "--jobs", "2", "a", "b", "c"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        calls = (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""
        if "test a" in calls and "test b" in calls:
            break
        time.sleep(0.05)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    calls = (tmp_path / "calls").read_text().split("\n")
    assert {"destroy a", "destroy b"} <= set(calls) and "test c" not in calls
