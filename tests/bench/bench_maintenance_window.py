#!/usr/bin/env python3
"""bench_maintenance_window: what a site.yml run's agent restarts make the loop do, with
and without the maintenance window.

On the running podman lab (``make lab``), every mesh node's loop is armed (``enforce``,
``fixed``) through site.yml, as an operator would. Then ``--pairs`` pairs of site.yml
runs, each changing the agents' config (``mesh_agent_mapek_interval_s`` alternating
between 4 and 5 s), so every agent restarts, in the playbook's own waves and rounds:
one run with the window (the playbook's default) and one without
(``mesh_maintenance_window_s=0``, the baseline, the code before the window), their order
swapped in every other pair. After each run, ``--settle`` seconds, then every node's
incidents detected from the run's start to the end of the settle.

One JSON line per run (stdout): ``variant`` (window | none), the run's wall time, the
agent restarts site.yml made, the incidents and the nodes that had one, their outcomes,
``applied`` (actions the loop took: quarantines, holds, longer hellos...),
``in_maintenance`` (recorded, not acted on), ``decided_after`` (opened in the window and
still open at its end, then decided), ``still_open`` at the end of the settle, and
``windows_left_open`` (nodes whose window was still open after the run: the playbook
closes it). Then one ``summary`` line per variant. Progress on stderr. Afterwards the
lab is re-converged with its own settings (the loop off) unless ``--keep-armed``.

Needs root and a running lab (``make lab``); without one it prints one ``skipped`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from meshcore_testkit.containerlab import agent_ready, exec_in, incidents, site_run
from meshcore_tools.lab.state import MONITOR, load_state

RESTART_TASK = "Restart the agent, one round at a time"
ARMED = {"mesh_agent_mapek_enabled": True, "mesh_agent_mapek_mode": "enforce",
         "mesh_agent_mapek_policy": "fixed"}


def log(msg: str) -> None:
    print(f"[bench_maintenance_window {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr,
          flush=True)


def emit(**fields: Any) -> None:
    print(json.dumps({"bench": "maintenance_window", **fields,
                      "load1": round(os.getloadavg()[0], 2)}), flush=True)


def window_open(node: str) -> bool:
    res = exec_in(node, "meshctl", "--json", "maintenance")
    return res.returncode == 0 and bool(json.loads(res.stdout).get("open"))


def restarts(events: list[dict[str, Any]]) -> int:
    return sum(1 for e in events if e.get("event") == "runner_on_ok"
               and (e.get("event_data") or {}).get("task") == RESTART_TASK
               and ((e.get("event_data") or {}).get("res") or {}).get("changed"))


def run_line(variant: str, run: int, nodes: list[str], t0: float, t1: float, t2: float,
             n_restarts: int) -> dict[str, Any]:
    mine: list[tuple[str, dict[str, Any]]] = [
        (n, i) for n in nodes for i in incidents(n) if t0 <= i["detected_wall"] <= t2]
    outcomes: dict[str, int] = {}
    for _, i in mine:
        a = i["action"] or {}
        key = f"{a.get('kind', 'none')}:{a.get('outcome', '-')}"
        outcomes[key] = outcomes.get(key, 0) + 1
    applied = sum(1 for _, i in mine if (i["action"] or {}).get("outcome") == "applied"
                  and (i["action"] or {}).get("kind") != "none")
    in_window = sum(1 for _, i in mine if (i["action"] or {}).get("outcome") == "maintenance")
    return {"figure": "run", "variant": variant, "run": run, "wall_s": round(t1 - t0, 1),
            "restarts": n_restarts, "incidents": len(mine),
            "nodes_with_incidents": len({n for n, _ in mine}), "outcomes": outcomes,
            "applied": applied, "in_maintenance": in_window,
            "decided_after": sum(1 for _, i in mine if variant == "window"
                                 and i["detected_wall"] <= t1
                                 and (i["action"] or {}).get("outcome") != "maintenance"),
            "still_open": sum(1 for _, i in mine if i["state"] == "open"),
            "windows_left_open": sum(1 for n in nodes if window_open(n))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=2, help="pairs of runs (window, none)")
    p.add_argument("--settle", type=float, default=60.0,
                   help="seconds after each run before its incidents are read")
    p.add_argument("--work", type=Path, default=Path("build/bench-maintenance"),
                   help="ansible-runner's directories")
    p.add_argument("--keep-armed", action="store_true",
                   help="leave the loops armed (else the lab's own settings come back)")
    args = p.parse_args()
    try:
        state = load_state()
    except OSError:
        emit(figure="skipped", reason="no running lab (make lab)")
        return 0
    nodes = [n for n in sorted(state["nodes"]) if n != MONITOR]
    args.work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    try:
        log(f"arming the loop on {len(nodes)} nodes (site.yml, enforce, fixed)")
        rc, _ = site_run({**ARMED, "mesh_agent_mapek_interval_s": 5.0}, args.work / "arm")
        if rc != 0:
            raise RuntimeError(f"arming: site.yml rc {rc}")
        for n in nodes:
            agent_ready(n)
        time.sleep(args.settle)  # the loops arm 15 s after their agent is ready
        run = 0
        for pair in range(args.pairs):
            for variant in (("window", "none") if pair % 2 == 0 else ("none", "window")):
                run += 1
                interval = 4.0 if run % 2 else 5.0  # a config change: every agent restarts
                extra = {**ARMED, "mesh_agent_mapek_interval_s": interval}
                if variant == "none":
                    extra["mesh_maintenance_window_s"] = 0
                log(f"run {run}: site.yml, window {variant}, interval_s {interval}")
                t0 = time.time()
                rc, events = site_run(extra, args.work / f"run{run}")
                t1 = time.time()
                if rc != 0:
                    raise RuntimeError(f"run {run}: site.yml rc {rc}")
                time.sleep(args.settle)
                line = run_line(variant, run, nodes, t0, t1, time.time(), restarts(events))
                rows.append(line)
                emit(**line)
                log(f"run {run} ({variant}): {line['incidents']} incidents on "
                    f"{line['nodes_with_incidents']} nodes, {line['applied']} actions applied")
        for variant in ("none", "window"):
            mine = [r for r in rows if r["variant"] == variant]
            emit(figure="summary", variant=variant, runs=len(mine),
                 restarts=sum(r["restarts"] for r in mine),
                 incidents=sum(r["incidents"] for r in mine),
                 applied=sum(r["applied"] for r in mine),
                 in_maintenance=sum(r["in_maintenance"] for r in mine),
                 decided_after=sum(r["decided_after"] for r in mine),
                 windows_left_open=sum(r["windows_left_open"] for r in mine),
                 nodes=len(nodes))
    finally:
        if not args.keep_armed:
            log("putting the lab back (its own settings: the loop off)")
            rc, _ = site_run({}, args.work / "disarm")
            if rc != 0:
                log(f"re-converging with the lab's settings failed (rc {rc})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as exc:
        raise SystemExit(f"bench_maintenance_window: {exc}") from None
