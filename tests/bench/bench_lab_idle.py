#!/usr/bin/env python3
"""bench_lab_idle: what the mesh agents cost at rest on the running container lab.

Run right after ``make lab NODES=50`` (the lab is one per machine: wrap both
in ``flock`` on the shared lab lock where others use it too):

    .venv/bin/python tests/bench/bench_lab_idle.py [--settle 60] [--window 30] [--label after]

It finds the lab's node containers by their label (``io.meshcore.lab=1``, so it
measures whichever checkout built the lab), waits ``--settle`` seconds, then
over ``--window`` seconds sums utime+stime of every ``mesh-agent`` process in
those containers (``/proc/<pid>/stat``), and reads their RSS (``VmRSS``) and
PSS (``/proc/<pid>/smaps_rollup``). The same figures for the node_exporter in
the same containers, over the same window, are the baseline: a small Go
daemon doing periodic work beside the agent, so a busy host shows in both.

One JSON line per figure, with the 1-minute load average before and after the
window. Without a running lab it prints one ``skipped`` line. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

LABEL = "io.meshcore.lab"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# /proc/<pid>/comm: the executable's basename, cut at 15 characters.
PROCESSES = {"mesh_agent": "mesh-agent", "node_exporter": "prometheus-node"}


def emit(**fields: Any) -> None:
    print(json.dumps({"bench": "lab_idle", **fields}), flush=True)


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def lab_containers() -> dict[str, int]:
    """Node container name -> host PID of its systemd (the monitor is left out)."""
    out = subprocess.run(
        ["podman", "ps", "--filter", f"label={LABEL}=1", "--format", "{{.Names}} {{.Pid}}"],
        capture_output=True, text=True, check=False).stdout
    found = {}
    for line in out.splitlines():
        name, _, pid = line.partition(" ")
        if pid.isdigit() and pid != "0" and not name.endswith("monitor01"):
            found[name] = int(pid)
    return found


def pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def processes(containers: dict[str, int]) -> dict[str, dict[str, int]]:
    """kind -> container -> host PID of that process inside it."""
    by_ns = {pid_ns(pid): name for name, pid in containers.items()}
    found: dict[str, dict[str, int]] = {kind: {} for kind in PROCESSES}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        for kind, name in PROCESSES.items():
            if comm == name:
                container = by_ns.get(pid_ns(int(entry.name)))
                if container is not None:
                    found[kind][container] = int(entry.name)
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB."""
    rss = pss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1]) / 1024
    return rss, pss


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2),
            "mean": round(statistics.mean(values), 2),
            "min": round(min(values), 2), "max": round(max(values), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settle", type=float, default=60.0, help="seconds to wait first")
    p.add_argument("--window", type=float, default=30.0, help="seconds of CPU accounting")
    p.add_argument("--label", default="", help="a tag for the rows (before, after, ...)")
    a = p.parse_args()
    if os.geteuid() != 0:
        emit(figure="skipped", reason="needs root (podman, /proc of the containers)")
        return
    containers = lab_containers()
    if not containers:
        emit(figure="skipped", reason="no lab running: make lab NODES=50 first")
        return
    time.sleep(a.settle)
    procs = processes(containers)
    common = {"label": a.label, "nodes": len(containers), "window_s": a.window}
    load_before = load1()
    start = {kind: {c: cpu_seconds(pid) for c, pid in pids.items()} for kind, pids in procs.items()}
    t0 = time.monotonic()
    time.sleep(a.window)
    elapsed = time.monotonic() - t0
    end = {kind: {c: cpu_seconds(pid) for c, pid in pids.items() if Path(f"/proc/{pid}").exists()}
           for kind, pids in procs.items()}
    load_after = load1()
    for kind, pids in procs.items():
        alive = [c for c in pids if c in end[kind]]
        if not alive:
            emit(**common, impl=kind, figure="processes", value=0)
            continue
        cpu = [100 * (end[kind][c] - start[kind][c]) / elapsed for c in alive]
        mem = [memory_mb(pids[c]) for c in alive]
        emit(**common, impl=kind, figure="processes", value=len(alive),
             restarted_or_missing=len(containers) - len(alive))
        emit(**common, impl=kind, figure="cpu_pct_per_process", unit="% of one core",
             **summary(cpu), load1_before=load_before, load1_after=load_after)
        emit(**common, impl=kind, figure="cpu_pct_all", unit="% of one core",
             value=round(sum(cpu), 1), load1_before=load_before, load1_after=load_after)
        emit(**common, impl=kind, figure="rss_mb", unit="MB", **summary([m[0] for m in mem]))
        emit(**common, impl=kind, figure="pss_mb", unit="MB", **summary([m[1] for m in mem]))


if __name__ == "__main__":
    main()
