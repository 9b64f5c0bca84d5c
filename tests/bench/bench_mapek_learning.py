#!/usr/bin/env python3
"""bench_mapek_learning: does the MAPE-K loop's Knowledge learn? fixed vs learned, same run.

Issue 19's judgement. Two netns labs of the same topology run side by side, one with
``mapek.policy: fixed`` (the rule table: the control arm) and one with ``learned``
(Thompson sampling over Knowledge), both ``mapek.mode: enforce``, no lease service
(local actions only). Each round the chaos runner (meshcore_tools.chaos) plays the
same seeded fault mix on both labs at the same time (one thread per lab, so both
share the machine's load), while a background of ``--background-pct`` % loss sits
on ``--background-links`` seeded links of each lab for the whole round (the false
alarms the issue bounds). Knowledge carries over from round to round (the agents keep
running), which is what is being tested.

After each round every agent's ``/v1/incidents`` is read. An incident is *attributed*
to a fault when it was detected while the fault held (from its injection to
``--grace`` seconds after its removal) and it is about what the fault touched: a link
incident (``lossy_link``, ``slow_link``, ``flapping_link``) on the faulty link itself, or
on a link of the faulty node; a node incident (``starved_node``, ``advert_storm``) on the
faulty node or a neighbour of it (on either end, for a link fault); a mesh-wide one
(``route_churn``, ``failover_storm``: every node's routes move when one link does)
anywhere. Any other incident is a *false alarm* (a background link's included). One JSON
line per round and policy (stdout):

  round        incidents, attributed, false_alarms, false_alarms_per_node_hour,
               mttr_p50_s / mttr_p95_s over the attributed incidents that recovered,
               actions (kind: count), probe_loss_pct (the chaos probe over the round:
               the mitigation's effect on traffic), thresholds (mean per signal),
               ttm_p50_s / ttm_p95_s (the agents' own time to mitigate, over the
               attributed link incidents whose link carried routes of theirs) and
               carried_not_mitigated,
               impact (per link fault: crossed_before_injection,
               crossed_at_injection, mitigated_s),
               mitigated_s_p50, never_mitigated

and a ``summary`` per policy (first and last ``--window`` rounds) and a PNG learning
curve (``--plot``). MTTR here is the agents' own (detected -> recovered, from the
incidents), so it includes the detector's debounce. An incident can outlast its round:
the ``round`` lines are written after the last round and ``--final-wait`` more seconds,
from every incident's final state (``round_live`` lines, written as the run goes, show
what was known then); one still open at the end is counted in ``still_open`` and, at its
time open so far, in ``mttr_p95_s_lower_bound``.

A link fault's MTTR is about the fault's duration whatever the loop does (a quarantined
or held-down link is still faulty), so its *impact* says what the action did to traffic:
every node's kernel routes are sampled about once a second all round, and every ordered
pair's primary path walked next hop by next hop. ``crossed_before_injection`` is how
many pairs crossed the faulty link at the last sample before the injection (within 5 s),
``crossed_at_injection`` at the first sample after it; ``mitigated_s`` the seconds from
the injection to the sample from which none crossed it until the removal (0.0: none
crossed it at any sample while it held, so traffic that crossed it before had left
within the first sample, about a second; null: some still did at the removal, never
mitigated). ``mitigated_s_p50`` is over the link faults that carried traffic before or
at injection and were mitigated; ``never_mitigated`` counts the link faults of the
round that some pair still crossed at their removal.

Needs root. Namespaces ``mlf<pid>-*`` and ``mll<pid>-*``, deleted at the end; every
fault carries a node-side deadline and each lab's reaper removes it then.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from meshcore_testkit.bench import bench_workdir
from meshcore_testkit.pki import CA
from meshcore_testkit.routers import RoutingLab
from meshcore_tools.chaos import experiment, faults, probes, routes
from meshcore_tools.chaos.faults import Fault, Options, Topo
from meshcore_tools.chaos.mesh import Mesh, netns_mesh
from meshcore_tools.chaos.nodes import inject, reaper_argv, remove
from meshcore_tools.chaos.runner import Runner, usable_links
from meshcore_tools.lab import topology as topo

CLASSES = ["lossy", "slow", "cpu_starvation", "rogue"]
PARAMS: dict[str, dict[str, Any]] = {"lossy": {"loss_pct": 40}, "slow": {"rate": "64kbit"},
                                     "cpu_starvation": {"quota_pct": 5},
                                     "rogue": {"mode": "replay", "rate": 300, "seconds": 8}}
POLICIES = ("fixed", "learned")


def log(msg: str) -> None:
    print(f"[bench_mapek_learning {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr,
          flush=True)


def emit(**fields: Any) -> None:
    print(json.dumps({"bench": "mapek_learning", **fields, "load1": round(os.getloadavg()[0], 2)}),
          flush=True)


def quantile(values: list[float], q: float) -> float | None:
    return round(probes.quantile(values, q), 2) if values else None


def parse_params(items: list[str]) -> dict[str, dict[str, Any]]:
    """PARAMS with ``--param class.key=value`` overrides (a number where it reads as one),
    e.g. ``lossy.loss_pct=25``: a loss the routing's own cost does not always avoid, where
    whether the traffic leaves the link depends on the action."""
    out = {c: dict(v) for c, v in PARAMS.items()}
    for item in items:
        key, sep, raw = item.partition("=")
        cls, dot, name = key.partition(".")
        if not (sep and dot and cls and name):
            raise SystemExit(f"--param {item!r}: expected class.key=value")
        if cls not in faults.CLASSES:
            raise SystemExit(f"--param {item!r}: unknown fault class {cls!r}")
        value: Any = raw
        with contextlib.suppress(ValueError):
            value = float(raw) if "." in raw else int(raw)
        out.setdefault(cls, {})[name] = value
    return out


def fault_mix(classes: list[str], hold: float, settle: float, seed: int, t: Topo,
              avoid: list[tuple[str, str]],
              params: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The round's faults with their targets fixed from the seed and the topology alone
    (not a position on the probe's path, which the two labs' routes could resolve to
    different elements): both policies meet the same faults every round. Link faults
    stay off the background links (*avoid*)."""
    rng = random.Random(f"mix-{seed}")
    busy = {tuple(sorted(x)) for x in avoid}
    targets = []
    for c in classes:
        target = faults.pick_target(c, t, rng)
        while faults.CLASSES[c].target == "link" and tuple(sorted(target)) in busy:
            target = faults.pick_target(c, t, rng)
        targets.append(list(target))
    return experiment.validate({
        "version": 1, "title": f"bench_mapek_learning seed {seed}", "seed": seed,
        "steady_state": {"timeout_s": 120},
        "blast_radius": {"max_nodes": 80, "max_duration_s": 300},
        "faults": [{"class": c, "target": target, "duration_s": hold, "settle_s": settle,
                    "params": (params or PARAMS).get(c, {})} for c, target in zip(classes, targets,
                                                                      strict=True)],
    })


def background_links(t: Topo, n: int, seed: int) -> list[tuple[str, str]]:
    edges = sorted(tuple(sorted(e)) for e in t.graph.edges)
    return random.Random(f"background-{seed}").sample(edges, min(n, len(edges)))


LINK_CLASSES = {"lossy_link", "slow_link", "flapping_link"}
MESH_CLASSES = {"route_churn", "failover_storm"}


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    target: tuple[str, ...]  # a link's two ends, or one node
    kind: str  # link | node

    def explains(self, node: str, inc: dict[str, Any], t: Topo) -> bool:
        at = float(inc.get("detected_wall") or 0.0)
        if not self.start <= at <= self.end:
            return False
        cls, about = inc.get("class"), str(inc.get("target", ""))
        if cls in MESH_CLASSES:
            return True
        if cls in LINK_CLASSES:
            peer = about.removeprefix("link:")
            if self.kind == "link":
                return {node, peer} == set(self.target)
            return self.target[0] in (node, peer)
        near = set(self.target)
        if self.kind == "node":  # a rogue's floods and a starved node's silence reach its
            for n in self.target:  # neighbours; a link fault's node effects stay at its ends
                near |= set(t.graph.neighbors(n)) if n in t.graph else set()
        return node in near


def attribute(inc: dict[str, Any], node: str, windows: list[Window], t: Topo) -> bool:
    return any(w.explains(node, inc, t) for w in windows)


Crossings = dict[frozenset[str], int]  # link -> ordered pairs whose primary path crosses it
Sample = tuple[float, Crossings]  # when its dumps started, what they showed


def crossed_links(hops: routes.NextHops, names: list[str]) -> Crossings:
    """Per link, the ordered pairs whose primary path crosses it, walked as a packet goes
    (routes.walk). A walk that meets a missing route or comes back to a node
    ends there, and counts what it crossed on the way: those packets do cross it."""
    out: Crossings = {}
    for src in names:
        for dst in names:
            path = routes.walk(hops, src, dst)[0]
            for link in map(frozenset, pairwise(path)):
                out[link] = out.get(link, 0) + 1
    return out


def link_impact(samples: list[Sample], link: tuple[str, ...], start: float, end: float
                ) -> tuple[int | None, float | None]:
    """A link fault held from *start* to *end*: the pairs crossing *link* at the first
    sample of the window, and the seconds from *start* to the sample from which none
    crossed it until *end* (0.0 when none did all along; None when some still did at the
    last sample: never mitigated). (None, None) when no sample fell in the window."""
    key = frozenset(link)
    held = [(at, c.get(key, 0)) for at, c in samples if start <= at <= end]
    if not held:
        return None, None
    if held[-1][1]:
        return held[0][1], None
    crossed_at = [i for i, (_, n) in enumerate(held) if n]
    return held[0][1], round(held[crossed_at[-1] + 1][0] - start, 2) if crossed_at else 0.0


def crossed_before(samples: list[Sample], link: tuple[str, ...], start: float,
                   within: float = 5.0) -> int | None:
    """The pairs crossing *link* at the last sample in the *within* seconds before *start*
    (None: no sample then): whether the link carried traffic when its fault began. A link
    that did but shows none at the first sample of the fault was left before that sample
    (its cost rises with the first lost hellos)."""
    key = frozenset(link)
    before = [c.get(key, 0) for at, c in samples if start - within <= at < start]
    return before[-1] if before else None


class RoutePoller:
    """A thread sampling one lab's forwarding state about every *every* seconds until the
    ``with`` block ends; its error, if any, is raised there."""

    def __init__(self, mesh: Mesh, every: float = 1.0) -> None:
        self.mesh, self.every = mesh, every
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, name="route-poller", daemon=True)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                at = time.time()
                hops = self.mesh.hops()
                # A node with no route at all is a dump that timed out (or an agent
                # restarting): its walks would stop short and look like a mitigation.
                if all(hops.get(n) for n in self.mesh.names):
                    self.samples.append((at, crossed_links(hops, self.mesh.names)))
                self.stop.wait(max(0.0, at + self.every - time.time()))
        except BaseException as exc:  # raised by __exit__
            self.error = exc

    def __enter__(self) -> RoutePoller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        if self.error is not None and exc[0] is None:
            raise self.error


class Side:
    """One lab: its policy, mesh, the incidents seen so far."""

    def __init__(self, policy: str, lab: RoutingLab, mesh: Mesh) -> None:
        self.policy, self.lab, self.mesh = policy, lab, mesh
        # Every incident's latest state, and the round it was first seen after: an
        # incident still open when its round is read recovers later, and its MTTR must
        # count (leaving it out censors exactly the longest ones).
        self.incidents: dict[tuple[str, int], dict[str, Any]] = {}
        self.round_of: dict[tuple[str, int], int] = {}
        self.windows: dict[int, list[Window]] = {}
        self.docs: dict[int, dict[str, Any]] = {}
        self.round_s: dict[int, float] = {}
        self.doc: dict[str, Any] = {}
        self.samples: list[Sample] = []  # the current round's, by its poller
        self.impact: dict[int, list[dict[str, Any]]] = {}
        self.error: BaseException | None = None

    def read(self, rnd: int) -> dict[str, list[float]]:
        """Every agent's incidents (their latest states); new ones are *rnd*'s."""
        thresholds: dict[str, list[float]] = {}
        for n in self.mesh.names:
            code, body = self.mesh.get(n, "/v1/incidents?limit=1000")
            if code != 200:
                log(f"{self.policy}: {n} /v1/incidents answered {code}")
                continue
            doc = json.loads(body)
            for sig, v in doc.get("thresholds", {}).items():
                thresholds.setdefault(sig, []).append(float(v))
            for inc in doc.get("incidents", []):
                key = (n, int(inc["id"]))
                self.incidents[key] = inc
                self.round_of.setdefault(key, rnd)
        return thresholds

    def of_round(self, rnd: int) -> list[tuple[str, dict[str, Any]]]:
        return [(k[0], i) for k, i in sorted(self.incidents.items())
                if self.round_of[k] == rnd]


def run_round(side: Side, exp: dict[str, Any], t: Topo, rnd: int, a: argparse.Namespace,
              bg: list[tuple[str, str]]) -> None:
    try:
        budget = len(exp["faults"]) * (a.hold + a.settle + 40) + 120
        deadline = time.time() + budget
        bg_faults = [Fault("lossy", link, f"bg{rnd}-{i}", {"loss_pct": a.background_pct})
                     for i, link in enumerate(bg)]
        plans = [(f, faults.plan(f, t)) for f in bg_faults]
        for f, plan in plans:
            inject(side.mesh.nodes, f, plan, deadline, f"{side.policy}-background")
        try:
            opts = Options(restart_by_node=dict(side.lab.argv))
            with RoutePoller(side.mesh) as poller:
                side.doc = Runner(exp, side.mesh, opts, name=f"{side.policy[:3]}{rnd}",
                                  log=lambda m: log(f"{side.policy}: {m}")).run().journal
            side.samples = poller.samples
        finally:
            for f, plan in plans:
                remove(side.mesh.nodes, f, plan)
    except BaseException as exc:  # reported by the main thread
        side.error = exc


def record_round(side: Side, rnd: int, a: argparse.Namespace, round_s: float
                 ) -> dict[str, list[float]]:
    """After round *rnd*: its fault windows, its link faults' impact, its journal, and every
    agent's incidents."""
    steps = [s for s in side.doc.get("measurements", {}).get("steps", [])
             if "injected_at" in s and "removed_at" in s]
    side.windows[rnd] = [Window(float(s["injected_at"]), float(s["removed_at"]) + a.grace,
                                tuple(s.get("target", [])), faults.CLASSES[s["class"]].target)
                         for s in steps]
    side.impact[rnd] = []
    for s in steps:
        if faults.CLASSES[s["class"]].target == "link":
            link, start = tuple(s["target"]), float(s["injected_at"])
            crossed, mitigated = link_impact(side.samples, link, start, float(s["removed_at"]))
            side.impact[rnd].append({"class": s["class"], "link": list(link),
                                     "crossed_before_injection": crossed_before(
                                         side.samples, link, start),
                                     "crossed_at_injection": crossed, "mitigated_s": mitigated})
    side.docs[rnd], side.round_s[rnd] = side.doc, round_s
    return side.read(rnd)


def round_row(side: Side, t: Topo, rnd: int, bg: list[tuple[str, str]],
              thresholds: dict[str, list[float]], now: float) -> dict[str, Any]:
    """Round *rnd*'s figures from its incidents' states as they are now. MTTR p95 over the
    attributed incidents that recovered; ``still_open`` were not recovered yet (their
    time open so far is in ``mttr_p95_s_lower_bound``, with the recovered ones)."""
    windows, doc, round_s = side.windows[rnd], side.docs[rnd], side.round_s[rnd]
    new = side.of_round(rnd)
    attributed = [(n, i) for n, i in new if attribute(i, n, windows, t)]
    false = [(n, i) for n, i in new if not attribute(i, n, windows, t)]
    by_class: dict[str, dict[str, int]] = {}
    for group, rows in (("attributed", attributed), ("false", false)):
        for _, i in rows:
            c = by_class.setdefault(str(i["class"]), {"attributed": 0, "false": 0})
            c[group] += 1
    mttr = [float(i["mttr_seconds"]) for _, i in attributed if i.get("mttr_seconds") is not None]
    # The agents' own time to mitigate (their routes off the incident's link while it read
    # bad), over the attributed link incidents whose link carried any of their routes.
    carried = [i for _, i in attributed if i.get("carried")]
    ttm = [float(i["time_to_mitigate_seconds"]) for i in carried
           if i.get("time_to_mitigate_seconds") is not None]
    still_open = [i for _, i in attributed if i.get("state") == "open"]
    bound = mttr + [now - float(i["detected_wall"]) for i in still_open]
    actions = Counter(f"{i['class']}:{(i.get('action') or {}).get('kind')}"
                      f"/{(i.get('action') or {}).get('outcome')}" for _, i in new)
    loss = [lv.get("loss_pct") for lv in doc.get("measurements", {})
            .get("service_levels", {}).values()]
    node_hours = len(side.mesh.names) * round_s / 3600
    bg_names = {f"{x}|{y}" for x, y in bg} | {f"{y}|{x}" for x, y in bg}
    impact = side.impact[rnd]
    mitigated = [float(x["mitigated_s"]) for x in impact if x["mitigated_s"] is not None
                 and (x.get("crossed_before_injection") or x["crossed_at_injection"])]
    return {"round": rnd, "policy": side.policy, "round_s": round(round_s, 1),
            "faults": len(windows), "incidents": len(new), "attributed": len(attributed),
            "false_alarms": len(false), "by_class": dict(sorted(by_class.items())),
            "false_alarms_on_background_links": sum(
                1 for n, i in false if f"{n}|{str(i.get('target', '')).removeprefix('link:')}"
                in bg_names),
            "false_alarms_per_node_hour": round(len(false) / node_hours, 2) if node_hours else None,
            "false_alarm_examples": [f"{n} {i['class']} {i['target']}" for n, i in false[:4]],
            "mttr_p50_s": quantile(mttr, 0.5), "mttr_p95_s": quantile(mttr, 0.95),
            "recovered": len(mttr), "still_open": len(still_open),
            "mttr_p95_s_lower_bound": quantile(bound, 0.95),
            "actions": dict(sorted(actions.items())),
            "probe_loss_pct": loss[0] if loss else None,
            "thresholds": {k: round(sum(v) / len(v), 4) for k, v in sorted(thresholds.items())},
            "ttm_p50_s": quantile(ttm, 0.5), "ttm_p95_s": quantile(ttm, 0.95),
            "carried_not_mitigated": len(carried) - len(ttm),
            "impact": impact, "mitigated_s_p50": quantile(mitigated, 0.5),
            "never_mitigated": sum(1 for x in impact if x["crossed_at_injection"] is not None
                                   and x["mitigated_s"] is None),
            "journal_status": doc.get("status")}


def pooled(rs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rs if r[key] is not None]
    return round(sum(vals) / len(vals), 2) if vals else None


def summary(policy: str, mine: list[dict[str, Any]], window: int, nodes: int
            ) -> dict[str, Any]:
    """One policy's rounds (*mine*, in order): the first and last *window* rounds pooled."""
    first, last = mine[:window], mine[-window:]
    return dict(
        policy=policy, rounds=len(mine), window=window,
        still_open=sum(r["still_open"] for r in mine),
        mttr_p95_s_lower_bound_first=pooled(first, "mttr_p95_s_lower_bound"),
        mttr_p95_s_lower_bound_last=pooled(last, "mttr_p95_s_lower_bound"),
        mttr_p95_s_first=pooled(first, "mttr_p95_s"),
        mttr_p95_s_last=pooled(last, "mttr_p95_s"),
        false_alarms_first=pooled(first, "false_alarms"),
        false_alarms_last=pooled(last, "false_alarms"),
        false_alarms_per_node_hour=round(
            sum(r["false_alarms"] for r in mine)
            / max(1e-9, sum(nodes * r["round_s"] / 3600 for r in mine)), 2),
        probe_loss_pct_first=pooled(first, "probe_loss_pct"),
        probe_loss_pct_last=pooled(last, "probe_loss_pct"),
        mitigated_s_p50_first=pooled(first, "mitigated_s_p50"),
        mitigated_s_p50_last=pooled(last, "mitigated_s_p50"),
        never_mitigated_first=pooled(first, "never_mitigated"),
        never_mitigated_last=pooled(last, "never_mitigated"),
        ttm_p95_s_first=pooled(first, "ttm_p95_s"),
        ttm_p95_s_last=pooled(last, "ttm_p95_s"))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for policy in POLICIES:
        mine = [r for r in rows if r["policy"] == policy]
        x = [r["round"] for r in mine]
        for ax, key in zip(axes, ("mttr_p95_s", "false_alarms", "probe_loss_pct"), strict=True):
            line, = ax.plot(x, [r[key] if r[key] is not None else math.nan for r in mine],
                            marker="o", label=policy)
            if key == "mttr_p95_s":  # the still-open incidents at their time open so far
                ax.plot(x, [r["mttr_p95_s_lower_bound"] or math.nan for r in mine],
                        linestyle="--", color=line.get_color(), alpha=0.6,
                        label=f"{policy}, open ones included (lower bound)")
    for ax, title in zip(axes, ("MTTR p95 (s), attributed incidents", "false alarms per round",
                                "probe loss over the round (%)"), strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("MAPE-K: fixed rule table vs learned (Thompson sampling), same fault mix "
                 "every round, same run", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"plot: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topology", default="rgg:16", help="kind:n (a lab topology generator)")
    p.add_argument("--seed", type=int, default=1, help="topology, fault mix and background")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--classes", default=",".join(CLASSES))
    p.add_argument("--hold", type=float, default=20.0, help="seconds each fault holds")
    p.add_argument("--settle", type=float, default=15.0, help="seconds after each fault")
    p.add_argument("--grace", type=float, default=15.0,
                   help="an incident detected this long after its fault's removal is its")
    p.add_argument("--interval", type=float, default=5.0,
                   help="mapek.interval_s (the agent's default)")
    p.add_argument("--raw", type=Path, help="append every round's incidents and fault windows here")
    p.add_argument("--param", action="append", default=[], metavar="CLASS.KEY=VALUE",
                   help="override a fault parameter (repeatable), e.g. lossy.loss_pct=25")
    p.add_argument("--background-pct", type=int, default=10)
    p.add_argument("--background-links", type=int, default=2)
    p.add_argument("--window", type=int, default=3, help="rounds compared first vs last")
    p.add_argument("--plot", type=Path, help="write the learning curve PNG here")
    p.add_argument("--final-wait", type=float, default=150.0,
                   help="seconds after the last round for open incidents to end")
    a = p.parse_args()
    if os.geteuid() != 0:
        emit(figure="skipped", reason="needs root for network namespaces")
        return
    kind, _, n = a.topology.partition(":")
    state = topo.normalise(topo.build(kind, int(n or 0), seed=a.seed))
    t = Topo(state)
    bg = background_links(t, a.background_links, a.seed)
    exp = fault_mix(a.classes.split(","), a.hold, a.settle, a.seed, t, bg, parse_params(a.param))
    log(f"{state['name']}: {len(state['nodes'])} nodes; background {a.background_pct} % loss "
        f"on {bg}; {a.rounds} rounds of " + ", ".join(
            f"{f['class']} {'-'.join(f['target'])}" for f in exp["faults"]))
    ca = CA.create("bench CA")
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        sides = []
        for policy in POLICIES:
            prefix = f"ml{policy[0]}"

            def make_lab(d: Path, prefix: str = prefix) -> RoutingLab:
                return RoutingLab(state, d, prefix=prefix)

            workdir, lab = stack.enter_context(bench_workdir(f"bench-mapek-{policy}-", make_lab))
            lab.up()
            t0 = time.time()
            lab.start_agent(ca, {"mapek": {"enabled": True, "mode": "enforce", "policy": policy,
                                           "interval_s": a.interval}})
            mesh = netns_mesh(state, lab.ns, workdir / "journal")
            stack.callback(mesh.close)
            for node in state["nodes"]:  # the node-side deadline, as the role's timer
                lab.spawn_argv(reaper_argv(mesh.nodes, node, interval=1.0),
                               workdir / f"{node}.reaper.log")
            while not routes.picture(mesh.hops(), t.graph, usable_links(t, None)).converged:
                if time.time() - t0 > 180:
                    raise SystemExit(f"{policy}: not converged in 180 s; see {workdir}")
                time.sleep(0.5)
            log(f"{policy}: routed after {time.time() - t0:.1f} s")
            sides.append(Side(policy, lab, mesh))
        time.sleep(20.0)  # past START_SETTLE_S: every loop armed
        for rnd in range(1, a.rounds + 1):
            t_round = time.time()
            threads = [threading.Thread(target=run_round, args=(s, exp, t, rnd, a, bg),
                                        name=s.policy) for s in sides]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            for s in sides:
                if s.error is not None:
                    raise s.error
            round_s = time.time() - t_round
            time.sleep(a.grace)  # incidents of the last fault are raised within the grace
            for s in sides:
                seen = record_round(s, rnd, a, round_s)
                emit(figure="round_live", **round_row(s, t, rnd, bg, seen, time.time()))
        # Incidents still open after the last round: give them time to recover, then take
        # every round's figures from the incidents' final states.
        log(f"waiting {a.final_wait:.0f} s for open incidents to end")
        time.sleep(a.final_wait)
        for s in sides:
            final = s.read(a.rounds + 1)  # anything new now belongs to no round
            now = time.time()
            for rnd in range(1, a.rounds + 1):
                row = round_row(s, t, rnd, bg, final, now)
                rows.append(row)
                emit(figure="round", **row)
            if a.raw is not None:
                with a.raw.open("a") as f:
                    for rnd in range(1, a.rounds + 1):
                        f.write(json.dumps({"round": rnd, "policy": s.policy,
                                            "windows": [w.__dict__ for w in s.windows[rnd]],
                                            "impact": s.impact[rnd],
                                            "incidents": [[n, i] for n, i in s.of_round(rnd)]})
                                + "\n")
    for policy in POLICIES:
        emit(figure="summary", **summary(policy, [r for r in rows if r["policy"] == policy],
                                         a.window, len(state["nodes"])))
    if a.plot and rows:
        plot(rows, a.plot)


if __name__ == "__main__":
    main()
