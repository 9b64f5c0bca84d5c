#!/usr/bin/env python3
"""bench_agent_rss: an agent's resident memory at idle, where it goes, and babeld beside it.

Part 1, the whole process. A netns lab of the given topology (default: a 4-node ladder, a ring)
runs the agent as its unit does (enforce mode, 50 ms x 3 hellos), with its API built
and scraped every 5 s as Prometheus would. After ``--settle`` seconds of that, each
agent's ``/proc/<pid>/smaps_rollup`` gives RSS, PSS and their anonymous and
file-backed parts. Then babeld (hello 0.2 s) runs on the same topology in the same run,
as the baseline, and the same figures are taken of it.

Part 2, attribution. In a fresh interpreter per step (``python -OO``, as the unit runs
it), the agent's heavy dependencies are imported in the order the agent imports them,
and each step's growth in anonymous and file-backed RSS is reported: what each costs
on top of the ones before it. The steps and their order are the agent's own imports
(``ATTRIBUTION``); a dependency added to the agent should be added here.
``MESHCORE_AGENT_PYTHONPATH`` (meshcore_testkit.agents) measures another tree's agent
in both parts.

One JSON line per figure on stdout; progress on stderr.

    python tests/bench/bench_agent_rss.py [--topologies ladder:4] [--settle 60]

Needs root (namespaces) for part 1; part 2 runs anywhere.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from meshcore_testkit.agents import agent_env, api
from meshcore_testkit.bench import bench_preflight, bench_workdir
from meshcore_testkit.pki import CA
from meshcore_testkit.routers import BABELD, RoutingLab
from meshcore_tools.lab import topology as topo

# The agent's imports, heaviest first as the agent meets them: the routing core, then
# the API built once routing has settled (agent.py _build_api).
ATTRIBUTION = (
    ("stdlib: asyncio, json, logging, sqlite3", "import asyncio, json, logging, sqlite3"),
    ("cryptography (x509, ECDSA)", "import cryptography.x509, "
     "cryptography.hazmat.primitives.asymmetric.ec"),
    ("yaml", "import yaml"),
    ("networkx", "import networkx"),
    ("pyroute2", "import pyroute2"),
    ("prometheus_client", "import prometheus_client"),
    ("the agent (mesh_agent.agent)", "import mesh_agent.agent"),
    ("the API (mesh_agent.api and its HTTP stack)", "import mesh_agent.api"),
)

PROBE = """
import sys
def rss():
    d = {l.split(':')[0]: int(l.split()[1]) for l in open('/proc/self/status')
         if l.startswith(('RssAnon', 'RssFile'))}
    return d['RssAnon'] / 1024, d['RssFile'] / 1024
for stmt in sys.argv[1:-1]:
    exec(stmt)
a0, f0 = rss()
n0 = len(sys.modules)
exec(sys.argv[-1])
a1, f1 = rss()
print(a1 - a0, f1 - f0, len(sys.modules) - n0)
"""


def log(msg: str) -> None:
    print(f"[bench_agent_rss] {msg}", file=sys.stderr, flush=True)


def emit(**fields: Any) -> None:
    load1 = float(Path("/proc/loadavg").read_text().split()[0])
    print(json.dumps({"bench": "agent_rss", **fields, "load1": load1}), flush=True)


def smaps(pid: int) -> dict[str, float]:
    """RSS and PSS, anonymous and file-backed, in MB, from smaps_rollup."""
    keys = {"Rss": "rss", "Pss": "pss", "Pss_Anon": "pss_anon", "Pss_File": "pss_file",
            "Anonymous": "anon"}
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in keys:
            out[keys[k]] = int(v.split()[0]) / 1024
    out["file"] = out["rss"] - out["anon"]
    return out


def summary(per_proc: list[dict[str, float]]) -> dict[str, float]:
    return {f"{k}_mb": round(statistics.median(p[k] for p in per_proc), 1)
            for k in ("rss", "anon", "file", "pss")} | {
        "rss_mb_max": round(max(p["rss"] for p in per_proc), 1), "processes": len(per_proc)}


def whole_process(spec: str, settle: float) -> None:
    kind, n = spec.split(":")
    state = topo.normalise(topo.build(kind, int(n), seed=1))
    name = state["name"]
    with bench_workdir("bench-rss-", lambda d: RoutingLab(state, d, prefix="brs")) as (_, lab):
        lab.up()
        for impl in ("mesh_agent", "babeld-h0.2"):
            if impl == "mesh_agent":
                lab.start_agent(CA.create("bench CA"))
            else:
                lab.start_babeld(BABELD[impl])
            log(f"{name}: {impl} started, {settle:.0f} s at idle")
            t0 = time.monotonic()
            while time.monotonic() - t0 < settle:
                if impl == "mesh_agent":  # the API is scraped, as Prometheus does
                    for node in state["nodes"]:
                        api(lab.ns(node), "/metrics")
                        api(lab.ns(node), "/v1/neighbors")
                time.sleep(5.0)
            pids = [p.pid for p in lab.procs if p.poll() is None]
            if impl == "mesh_agent":
                ready = sum(api(lab.ns(node), "/readyz")[0] == 200 for node in state["nodes"])
            else:
                ready = len(pids)
            emit(topology=name, impl=impl, figure="idle_memory", unit="MB",
                 settle_s=settle, ready=ready, **summary([smaps(p) for p in pids]))
            lab.stop()


def attribution() -> None:
    done: list[str] = []
    total_anon = total_file = 0.0
    for label, stmt in ATTRIBUTION:
        out = subprocess.run([sys.executable, "-OO", "-c", PROBE, *done, stmt],
                             capture_output=True, text=True, check=True,
                             env=agent_env()).stdout.split()
        anon, file, modules = float(out[0]), float(out[1]), int(out[2])
        total_anon += anon
        total_file += file
        emit(figure="import_rss", step=label, anon_mb=round(anon, 1), file_mb=round(file, 1),
             modules=modules, unit="MB")
        done.append(stmt)
    emit(figure="import_rss_total", anon_mb=round(total_anon, 1),
         file_mb=round(total_file, 1), unit="MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topologies", default="ladder:4", help="comma-separated kind:n")
    p.add_argument("--settle", type=float, default=60.0, help="seconds at idle before reading")
    p.add_argument("--attribution-only", action="store_true")
    a = p.parse_args()
    attribution()
    if a.attribution_only or not bench_preflight("bench_agent_rss", emit):
        return
    for spec in a.topologies.split(","):
        whole_process(spec, a.settle)


if __name__ == "__main__":
    main()
