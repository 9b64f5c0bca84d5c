#!/usr/bin/env python3
"""bench_lossy_background: what a background of lossy links costs a mesh at rest.

Run: python tests/bench/bench_lossy_background.py [--topologies rgg:12] [--loss-pct 10]
         [--lossy-share 0.25] [--window 300] [--impls mesh_agent,babeld-wireless-h0.2]
         [--baseline-agent DIR]
(needs root and babeld; prints one JSON object per line, progress on stderr)

A real radio mesh always has marginal links. Per topology the bench builds one netns
lab (meshcore_testkit.routers) and, one routing implementation at a time,

  mesh_agent            the agent (50 ms x 3 hellos, echo probes) with its self-healing
                        loop enforcing the fixed policy, as the lab runs it
  mesh_agent@baseline   the same with another build of the agent (--baseline-agent: an
                        older tree's files/mesh_agent), for a before/after in one run
  babeld-wireless-h0.2  babeld, wireless links (ETX), hello 0.2 s / update 1 s
  babeld-h0.2           babeld, wired links ("2 out of 3" hellos), same timers

waits until every pair is routed, then watches ``--trials`` pairs of windows of
``--window`` seconds: ``clean`` (no loss anywhere) and ``lossy``, in which a seeded
``--lossy-share`` of the links (at least one) drop ``--loss-pct`` % of what arrives on
both ends (nft ``numgen``, as the chaos suite's ``lossy`` fault), so each direction
loses that share. Nothing else happens, so every incident the loop opens is a false
alarm: the loss stays under its 20 % ``lossy_link`` threshold. Figures, per
implementation and window:

  route_events_per_node_min   kernel route and nexthop messages (``ip monitor``), the
                              forwarding churn every implementation causes
  neighbour_downs             agent: neighbour deaths its logs show, on the lossy links
                              and on the others (``per_lossy_link_hour``)
  topology_changes_per_node_min, adverts_originated_per_node_min
                              agent: recomputes, and adverts it flooded (a cost change or
                              a neighbour change each)
  false_alarms_per_node_hour  agent: incidents opened in the window, by class
  all_pairs_routed            every pair routed without a loop at the window's end

At the end, and with ``--table-of FILE`` for an earlier run's lines, a markdown table:
one row per implementation and window, the trials' figures summed over their windows.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from meshcore_testkit.agents import api_json, metric
from meshcore_testkit.bench import bench_parser, bench_preflight, bench_workdir
from meshcore_testkit.pki import CA
from meshcore_testkit.routers import BABELD, RoutingLab
from meshcore_tools import netns
from meshcore_tools.lab import topology as topo

MAPEK = {"mapek": {"enabled": True, "mode": "enforce", "policy": "fixed"}}
COLD_START_TIMEOUT_S = 180.0
BASELINE = "mesh_agent@baseline"


def log(msg: str) -> None:
    print(f"[bench_lossy_background {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr,
          flush=True)


RECORDS: list[dict[str, Any]] = []


def emit(**fields: Any) -> None:
    rec = {"bench": "lossy_background", **fields}
    RECORDS.append(rec)
    print(json.dumps(rec), flush=True)


def lossy_links(state: dict[str, Any], share: float, seed: int) -> list[tuple[str, str]]:
    """A seeded ``share`` of the links (at least one), as (a, b) node pairs."""
    links = sorted((str(link["a"]), str(link["b"])) for link in state["links"])
    count = max(1, round(share * len(links)))
    return sorted(random.Random(seed).sample(links, min(count, len(links))))


class RouteMonitor:
    """``ip -o monitor route nexthop`` in every namespace; counts the messages."""

    def __init__(self, lab: RoutingLab) -> None:
        self.procs = [subprocess.Popen(
            netns.exec_argv(lab.ns(node), "ip", "-o", "monitor", "route", "nexthop"),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for node in lab.state["nodes"]]

    def stop(self) -> int:
        total = 0
        for p in self.procs:
            p.terminate()
            out, _ = p.communicate(timeout=10)
            total += sum(1 for line in out.splitlines() if line.strip())
        return total


class AgentCounters:
    """What the agents count, read at a window's start and end."""

    def __init__(self, lab: RoutingLab) -> None:
        self.lab = lab
        self.deaths = self._deaths()
        self.changes = self._sum("meshcore_topology_changes_total")
        self.originated = self._sum("meshcore_adverts_originated_total")
        self.wall = time.time()

    def _sum(self, name: str) -> float:
        return sum(metric(self.lab.ns(n), name) for n in self.lab.state["nodes"])

    def _deaths(self) -> dict[tuple[str, str], int]:
        """Per (node, peer): the neighbour deaths its log shows so far."""
        out: dict[tuple[str, str], int] = {}
        for node in self.lab.state["nodes"]:
            path = self.lab.workdir / f"{node}.agent.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            for peer_end in self.lab.state["nodes"][node]["links"]:
                peer = str(peer_end["peer"])
                out[(node, peer)] = text.count(f"neighbour {peer} down on ")
        return out

    def incidents(self) -> list[dict[str, Any]]:
        """The incidents every agent opened since these counters were read."""
        out = []
        for node in self.lab.state["nodes"]:
            doc = api_json(self.lab.ns(node), "/v1/incidents?limit=1000")
            out += [dict(i, node=node) for i in doc["incidents"]
                    if float(i["detected_wall"]) >= self.wall]
        return out


def window(lab: RoutingLab, impl: str, name: str, label: str, seconds: float,
           lossy: list[tuple[str, str]], trial: int) -> None:
    nodes = len(lab.state["nodes"])
    agent = impl.startswith("mesh_agent")
    before = AgentCounters(lab) if agent else None
    mon = RouteMonitor(lab)
    t0 = time.monotonic()
    time.sleep(seconds)
    events = mon.stop()
    elapsed = time.monotonic() - t0
    tags = {"topology": name, "impl": impl, "window": label, "trial": trial,
            "seconds": round(elapsed, 1), "nodes": nodes}
    emit(**tags, figure="route_events_per_node_min",
         value=round(events / nodes / elapsed * 60, 2), events=events)
    if before is not None:
        after = AgentCounters(lab)
        on = {frozenset(p) for p in lossy}
        downs = {k: after.deaths[k] - before.deaths.get(k, 0) for k in after.deaths}
        lossy_downs = sum(v for k, v in downs.items() if frozenset(k) in on)
        other_downs = sum(v for k, v in downs.items() if frozenset(k) not in on)
        link_hours = len(lossy) * elapsed / 3600 if label == "lossy" else 0.0
        emit(**tags, figure="neighbour_downs", lossy_links=lossy_downs, other_links=other_downs,
             per_lossy_link_hour=round(lossy_downs / link_hours, 1) if link_hours else None,
             unit="count")
        for fig, attr in (("topology_changes_per_node_min", "changes"),
                          ("adverts_originated_per_node_min", "originated")):
            delta = getattr(after, attr) - getattr(before, attr)
            emit(**tags, figure=fig, value=round(delta / nodes / elapsed * 60, 2))
        opened = before.incidents()
        by_class: dict[str, int] = {}
        for inc in opened:
            by_class[inc["class"]] = by_class.get(inc["class"], 0) + 1
        emit(**tags, figure="false_alarms_per_node_hour",
             value=round(len(opened) / (nodes * elapsed / 3600), 2), incidents=len(opened),
             by_class=by_class)
    emit(**tags, figure="all_pairs_routed", value=lab.all_pairs_routed())


COLUMNS = (("route events /node-min", "route_events_per_node_min", "value"),
           ("downs, lossy links", "neighbour_downs", "lossy_links"),
           ("downs, other links", "neighbour_downs", "other_links"),
           ("recomputes /node-min", "topology_changes_per_node_min", "value"),
           ("adverts /node-min", "adverts_originated_per_node_min", "value"),
           ("false alarms /node-h", "false_alarms_per_node_hour", "value"),
           ("all pairs routed", "all_pairs_routed", "value"))


def table(records: list[dict[str, Any]]) -> str:
    """Markdown: per (topology, implementation, window), each figure over its trials
    (rates weighted by the windows' lengths, counts summed; '-': not measured)."""
    keys: list[tuple[str, str, str]] = []
    for r in records:
        key = (r.get("topology", ""), r.get("impl", ""), r.get("window", ""))
        if "figure" in r and r["figure"] != "skipped" and key not in keys:
            keys.append(key)
    head = ["topology", "implementation", "window", *(c[0] for c in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        mine = [r for r in records
                if (r.get("topology"), r.get("impl"), r.get("window")) == key]
        cells = list(key)
        for _, fig, field_ in COLUMNS:
            rs = [r for r in mine if r["figure"] == fig and r.get(field_) is not None]
            if not rs:
                cells.append("-")
            elif fig == "all_pairs_routed":
                cells.append(f"{sum(1 for r in rs if r[field_])}/{len(rs)}")
            elif field_ == "value":
                secs = sum(float(r["seconds"]) for r in rs)
                cells.append(f"{sum(r[field_] * r['seconds'] for r in rs) / secs:.2f}")
            else:
                cells.append(str(sum(int(r[field_]) for r in rs)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_topology(spec: str, impls: list[str], args: Any, ca: CA) -> None:
    kind, n = spec.split(":")
    state = topo.normalise(topo.build(kind, int(n), seed=args.seed))
    name = state["name"]
    lossy = lossy_links(state, args.lossy_share, args.seed)
    log(f"{name}: {len(state['nodes'])} nodes, {len(state['links'])} links, "
        f"{args.loss_pct} % loss on {lossy}")
    with bench_workdir("bench-lossy-bg-", lambda d: RoutingLab(state, d, prefix="mlb")) \
            as (_workdir, lab):
        lab.up()
        for impl in impls:
            if impl.startswith("mesh_agent"):
                if impl == BASELINE:
                    os.environ["MESHCORE_AGENT_PYTHONPATH"] = str(args.baseline_agent.resolve())
                else:
                    os.environ.pop("MESHCORE_AGENT_PYTHONPATH", None)
                lab.start_agent(ca, MAPEK)
            else:
                lab.start_babeld(BABELD[impl])
            t0 = time.monotonic()
            while not lab.all_pairs_routed():
                if time.monotonic() - t0 > COLD_START_TIMEOUT_S:
                    raise SystemExit(f"{impl} did not route every pair in "
                                     f"{COLD_START_TIMEOUT_S:.0f} s")
                time.sleep(1.0)
            log(f"{impl}: every pair routed after {time.monotonic() - t0:.1f} s; "
                f"settling {args.settle:.0f} s")
            time.sleep(args.settle)
            ends: list[tuple[str, str]] = []
            for a, b in lossy:
                ia, ib = lab.link_ifnames(a, b)
                ends += [(lab.ns(a), ia), (lab.ns(b), ib)]
            for trial in range(1, args.trials + 1):
                log(f"{impl}: clean window {trial}/{args.trials}, {args.window:.0f} s")
                window(lab, impl, name, "clean", args.window, lossy, trial)
                try:
                    for ns, ifname in ends:
                        netns.silent_cut(ns, ifname, True, loss_pct=args.loss_pct)
                    log(f"{impl}: lossy window {trial}/{args.trials}, {args.window:.0f} s")
                    window(lab, impl, name, "lossy", args.window, lossy, trial)
                finally:
                    for ns, ifname in ends:
                        netns.silent_cut(ns, ifname, False)
            lab.stop()
    os.environ.pop("MESHCORE_AGENT_PYTHONPATH", None)


def main() -> int:
    p = bench_parser(__doc__, topologies="rgg:12",
                     impls="mesh_agent,babeld-wireless-h0.2,babeld-h0.2", trials=1)
    p.add_argument("--loss-pct", type=int, default=10)
    p.add_argument("--lossy-share", type=float, default=0.25,
                   help="share of the links made lossy (seeded; at least one)")
    p.add_argument("--window", type=float, default=300.0, help="seconds per window")
    p.add_argument("--settle", type=float, default=30.0,
                   help="seconds after every pair is routed before the clean window")
    p.add_argument("--seed", type=int, default=1, help="topology and lossy-link seed")
    p.add_argument("--baseline-agent", type=Path,
                   help=f"another build's files/mesh_agent, run as {BASELINE} after "
                        "mesh_agent")
    p.add_argument("--table-of", type=Path,
                   help="print the table of an earlier run's lines and exit")
    args = p.parse_args()
    if args.table_of is not None:
        print(table([json.loads(x) for x in args.table_of.read_text().splitlines()
                     if x.strip()]))
        return 0
    if not bench_preflight("bench_lossy_background", emit):
        return 0
    impls = args.impls.split(",")
    if args.baseline_agent is not None and BASELINE not in impls:
        impls.insert(impls.index("mesh_agent") + 1 if "mesh_agent" in impls else 0, BASELINE)
    if BASELINE in impls and args.baseline_agent is None:
        raise SystemExit(f"{BASELINE} needs --baseline-agent")
    unknown = [i for i in impls if not i.startswith("mesh_agent") and i not in BABELD]
    if unknown:
        raise SystemExit(f"unknown implementations: {unknown} (known: mesh_agent, "
                         f"{BASELINE}, {', '.join(BABELD)})")
    ca = CA.create("bench CA")
    for spec in args.topologies.split(","):
        run_topology(spec, impls, args, ca)
    print(table(RECORDS), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
