#!/usr/bin/env python3
"""bench_chaos: MTTR per fault class, our agent vs babeld, same schedule, same topology, same run.

For each topology (the 50-node random geometric graph and the community mesh
by default) the bench builds one netns lab (meshcore_testkit.routers) and, one
routing implementation at a time,

  mesh_agent       the agent in enforce mode (50 ms x 3 hellos)
  babeld-h0.2      babeld, hello 0.2 s / update 1 s
  babeld-default   babeld with its own timers (hello 4 s on wired links)

waits for the cold start (every pair routed, no loop), then runs the same
seeded chaos experiment through the chaos runner (meshcore_tools.chaos): for
each class, ``--trials`` injections on the probe flow's path (Battlemesh: the
flow between the two farthest nodes, 10 ms pings at RT priority), each held
``--hold`` seconds. Figures, one JSON line each (stdout; progress on stderr):

  cold_start_s                      last daemon started -> all pairs routed
  <class> recover_ms p50/p95/max    probe: first loss to first success
                                    (partition: removal to first success, the heal)
  <class> detect_ms                 agent only: first link_down/failover event
  <class> reconverge_ms             every still-connected pair routed, no loop
  <class> after_removal_ms          node_crash: the node's rejoin; partition: heal
  <class> loops_max                 looping pairs seen while sampling
  ratio                             babeld p95 / our p95, per class

A recover time of "null" means the flow did not come back before the fault
was removed (counted, not dropped).

``--mode cumulative`` instead cuts ``--cuts`` links (silent cuts, seeded random
order, meshcore_tools.chaos.cumulative) one at a time without restoring any;
after each cut it waits at most ``--reconverge-max`` seconds for every pair the
remaining links connect to route again, then reports one line per cut
(``cumulative_step``: connected, routed, looping, holes, share) and a summary
(``cumulative``: final and worst share, steps at 100 %). Every cut is rolled
back at the end (and each node's reaper removes it at its deadline anyway).

Needs root and babeld. Namespaces ``mcc<pid>-<node>``, all deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from meshcore_chaos.node.reaper import MAX_DURATION_S
from meshcore_testkit.bench import bench_parser, bench_preflight, bench_workdir
from meshcore_testkit.pki import CA
from meshcore_testkit.routers import BABELD, RoutingLab
from meshcore_tools.chaos import cumulative, experiment, faults, probes, report, routes
from meshcore_tools.chaos.faults import Fault, Options, Topo
from meshcore_tools.chaos.mesh import Mesh, netns_mesh
from meshcore_tools.chaos.nodes import inject, rollback
from meshcore_tools.chaos.runner import SAMPLE_S, Runner, usable_links
from meshcore_tools.lab import topology as topo

CLASSES = ["silent_cut", "link_down", "lossy", "node_crash", "frozen_agent", "partition"]
PARAMS: dict[str, dict[str, Any]] = {"lossy": {"loss_pct": 40}, "node_crash": {"mode": "node"}}


def log(msg: str) -> None:
    print(f"[bench_chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def emit(**fields: Any) -> None:
    print(json.dumps({"bench": "chaos", **fields}), flush=True)


def suite(classes: list[str], trials: int, hold: float, settle: float, seed: int) -> dict[str, Any]:
    return experiment.validate({
        "version": 1, "title": f"bench_chaos seed {seed}", "seed": seed,
        "steady_state": {"timeout_s": 180},
        "blast_radius": {"max_nodes": 80, "max_duration_s": 120},
        "faults": [{"class": c, "target": "random", "duration_s": hold, "repetitions": trials,
                    "settle_s": settle, "params": PARAMS.get(c, {})} for c in classes],
    })


def cold_start(mesh: Mesh, t0: float, timeout: float) -> float | None:
    t = Topo(mesh.state)
    while time.time() - t0 < timeout:
        if routes.picture(mesh.hops(), t.graph, usable_links(t, None)).converged:
            return time.time() - t0
        time.sleep(0.5)
    return None


def summarise(name: str, impl: str, steps: list[dict[str, Any]]) -> dict[str, float]:
    p95s: dict[str, float] = {}
    for cls, got in sorted(report.by_class([{"measurements": {"steps": steps}}]).items()):
        rec = [v for s in got for v in (s.get("recover_s") or {}).values()]
        fields: dict[str, Any] = {"topology": name, "impl": impl, "class": cls,
                                  "trials": len(got)}
        for key, values in (("recover_ms", rec),
                            ("detect_ms", [s.get("detect_s") for s in got]),
                            ("reconverge_ms", [s.get("reconverge_s") for s in got]),
                            ("after_removal_ms", [s.get("reconverge_after_remove_s")
                                                  for s in got])):
            ok = [1000 * v for v in values if v is not None]
            fields[key] = ({"p50": round(probes.quantile(ok, 0.5), 1),
                            "p95": round(probes.quantile(ok, 0.95), 1),
                            "max": round(max(ok), 1)} if ok else None)
            fields[key + "_missing"] = len(values) - len(ok)
        fields["loops_max"] = max((s.get("loops_seen", 0) for s in got), default=0)
        spread = [1000 * s["applied_spread_s"] for s in got if "applied_spread_s" in s]
        if spread:  # the fault's nodes took it this far apart (one CLI start each)
            fields["applied_spread_ms"] = {"p50": round(probes.quantile(spread, 0.5), 1),
                                           "max": round(max(spread), 1)}
        emit(figure="mttr", **fields)
        if fields["recover_ms"] and not fields["recover_ms_missing"]:
            p95s[cls] = fields["recover_ms"]["p95"]
    return p95s


def run_cumulative(name: str, impl: str, mesh: Mesh, a: argparse.Namespace) -> None:
    t = Topo(mesh.state)
    order = cumulative.cut_order(t.graph, a.cuts, a.seed)
    # One node-side deadline for every cut: the whole run's bound, within the reaper's maximum.
    budget = len(order) * (a.reconverge_max + 10) + 60
    if budget > MAX_DURATION_S:
        raise SystemExit(f"bench_chaos: {len(order)} cuts need up to {budget:.0f} s, over the "
                         f"reaper's {MAX_DURATION_S:.0f} s bound: lower --reconverge-max")
    deadline = time.time() + budget
    cut: list[tuple[str, str]] = []
    touched: set[str] = set()
    steps: list[dict[str, Any]] = []
    try:
        for i, link in enumerate(order, 1):
            fault = Fault("silent_cut", link, f"{impl[:8]}-cum{i}")
            plan = faults.plan(fault, t)
            touched |= set(plan)
            res = inject(mesh.nodes, fault, plan, deadline, f"{impl[:8]}-cumulative")
            if not all(r.ok for r in res):
                log(f"{impl}: cut {i} {link} refused: {[r.data for r in res]}")
                break
            cut.append(link)
            usable = cumulative.usable_after(t.graph, cut)
            t0 = time.time()
            while True:
                pic = routes.picture(mesh.hops(), t.graph, usable)
                if pic.converged or time.time() - t0 > a.reconverge_max:
                    break
                time.sleep(SAMPLE_S)
            step = {"step": i, "cut": list(link), "connected": pic.connected,
                    "routed": pic.routed, "looping": len(pic.looping), "holes": len(pic.holes),
                    "share": round(pic.share, 4), "reconverged": pic.converged,
                    "reconverge_s": round(time.time() - t0, 2) if pic.converged else None,
                    "examples": [list(x) for x in (pic.looping + pic.holes)[:3]]}
            steps.append(step)
            emit(topology=name, impl=impl, figure="cumulative_step", **step)
        emit(topology=name, impl=impl, figure="cumulative", seed=a.seed,
             reconverge_max_s=a.reconverge_max, **cumulative.summary(steps))
    finally:
        rollback(mesh.nodes, sorted(touched))


def run_topology(spec: str, impls: list[str], a: argparse.Namespace) -> None:
    kind, _, n = spec.partition(":")
    state = topo.normalise(topo.build(kind, int(n or 0), seed=1))
    name = state["name"]
    log(f"{name}: {len(state['nodes'])} nodes, {len(state['links'])} links")
    ours: dict[str, float] = {}
    with bench_workdir("bench-chaos-", lambda d: RoutingLab(state, d, prefix="mcc")) as (
            workdir, lab):
        lab.up()
        ca = CA.create("bench CA")
        for impl in impls:
            t0 = time.time()
            if impl == "mesh_agent":
                lab.start_agent(ca)
                mesh = netns_mesh(state, lab.ns, workdir / "journal")
                match = "mesh_agent run"
            else:
                lab.start_babeld(BABELD[impl])
                mesh = netns_mesh(state, lab.ns, workdir / "journal", api=None,
                                  route_proto="babel")
                match = "babeld -c"
            try:
                conv = cold_start(mesh, t0, a.cold_timeout)
                emit(topology=name, impl=impl, figure="cold_start_s",
                     value=None if conv is None else round(conv, 2), unit="s")
                if conv is None:
                    log(f"{impl}: not converged in {a.cold_timeout} s; see {workdir}")
                    continue
                if a.mode == "cumulative":
                    run_cumulative(name, impl, mesh, a)
                    continue
                opts = Options(agent_match=match, restart_by_node=dict(lab.argv),
                               restart_log=str(workdir / f"restarted.{impl}.log"))
                exp = suite(a.classes.split(","), a.trials, a.hold, a.settle, a.seed)
                runner = Runner(exp, mesh, opts, name=f"{impl[:8]}", log=log)
                doc = runner.run().journal
                out = workdir / f"{name}.{impl}.journal.json"
                out.write_text(json.dumps(doc))
                if a.keep_journals:
                    Path(a.keep_journals).mkdir(parents=True, exist_ok=True)
                    shutil.copy(out, Path(a.keep_journals) / out.name)
                log(f"{impl}: status {doc['status']}, deviated {doc['deviated']}")
                if doc["status"] == "interrupted":  # the runner rolled back; stop the bench
                    raise KeyboardInterrupt
                for pair, lv in doc["measurements"].get("service_levels", {}).items():
                    emit(topology=name, impl=impl, figure="service_levels", probe=pair, **lv)
                p95s = summarise(name, impl, doc["measurements"].get("steps", []))
                if impl == "mesh_agent":
                    ours = p95s
                else:
                    for cls, theirs in p95s.items():
                        if ours.get(cls):
                            emit(topology=name, impl=impl, figure="ratio_p95", **{"class": cls},
                                 value=round(theirs / ours[cls], 2))
            finally:
                mesh.close()
                lab.stop()


def main() -> None:
    p = bench_parser(__doc__, topologies="rgg:50,community",
                     impls="mesh_agent,babeld-h0.2,babeld-default")
    p.add_argument("--classes", default=",".join(CLASSES))
    p.add_argument("--hold", type=float, default=6.0)
    p.add_argument("--settle", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cold-timeout", type=float, default=300.0,
                   help="seconds to wait for every pair to route after the daemons start")
    p.add_argument("--keep-journals", help="copy each run's journal here")
    p.add_argument("--mode", choices=["mttr", "cumulative"], default="mttr",
                   help="mttr: the fault classes' schedule; cumulative: links cut one by one, "
                        "none restored")
    p.add_argument("--cuts", type=int, default=50, help="cumulative: how many links to cut")
    p.add_argument("--reconverge-max", type=float, default=30.0,
                   help="cumulative: seconds to wait for reconvergence after each cut")
    a = p.parse_args()
    if not bench_preflight("bench_chaos", emit):
        return
    for spec in a.topologies.split(","):
        run_topology(spec, a.impls.split(","), a)


if __name__ == "__main__":
    main()
