"""Running an experiment: steady state, inject and measure, remove, steady state again.

1. The steady-state hypothesis is checked first (agents ready, every pair
   routed without a loop, the probes' ends reachable, no alert firing on the
   mesh's Prometheus when there is one), waiting at most its
   ``timeout_s`` for a mesh that is still converging. If it does not hold, the
   run injects nothing: the journal's ``status`` is ``failed``, ``deviated``
   false, and its ``before`` probes say which part failed. An alert that became
   active after the run (or the suite it belongs to: ``alerts_since``) began was
   raised by its own faults: the mesh noticing them, as it should. It is recorded
   (``raised_by_the_run``) and does not fail the hypothesis; rules over a window
   (``MeshFailoverStorm``: failovers over 5 minutes) keep firing for minutes
   after the fault is gone, and would otherwise fail the ``after`` check of the
   experiment that caused them and the ``before`` check of the next ones. The
   other probes (readiness, every pair routed, the probes' ends reachable) still
   say whether the mesh came back.
2. Probes start (10 ms pings at RT priority). Each step of the seeded
   schedule resolves its target (a link or transit node on the probe's current
   path, for ``random``), checks the blast radius, journals and applies the
   fault on its nodes with a deadline, samples global reconvergence while the
   fault holds, removes it, and samples again (a crashed node's rejoin, a
   partition's heal).
3. Whatever happened (an error, SIGINT, SIGTERM), every node the run touched
   is rolled back (its journal undone and its tags swept) with further
   SIGINT/SIGTERM ignored until that is done — chaostoolkit skips rollbacks on
   an interrupt and drops them on a second one. The run handles SIGINT itself
   (:func:`interrupts`), so a controller started with SIGINT ignored (a
   background job of a script, which Python then never interrupts) still
   stops and rolls back. The nodes' reapers remain the last line when the
   controller itself dies.
4. The steady state is checked again; ``deviated`` is true when it no longer
   holds.

Measurements (journal ``measurements.steps``, one per injection): detect time
from the agents' own event logs (first ``link_down``/``failover`` on a node
next to the fault after injection), recover time from each probe (first loss
to first success), global reconvergence (every pair the usable links still
connect is routed again, without loops) after injection and after removal.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshcore_tools.chaos import experiment as xp
from meshcore_tools.chaos import faults, probes, routes
from meshcore_tools.chaos.faults import Fault, Options, Topo
from meshcore_tools.chaos.journal import Activity, JournalBuilder, iso
from meshcore_tools.chaos.mesh import Mesh
from meshcore_tools.chaos.nodes import inject, remove, rollback
from meshcore_tools.interrupts import Interrupts, interrupts
from meshcore_tools.lab import prometheus as promapi

DEADLINE_GRACE_S = 20.0  # the node's deadline: the planned hold plus this
SAMPLE_S = 0.25  # how often reconvergence is sampled
RECONVERGE_MAX_S = 30.0


@dataclass
class Outcome:
    journal: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)


def usable_links(topo: Topo, fault: Fault | None) -> list[tuple[str, str]]:
    """The links a packet can cross while ``fault`` holds."""
    edges = [tuple(e) for e in topo.graph.edges]
    if fault is None:
        return [(a, b) for a, b in edges]
    dead: set[frozenset[str]] = set()
    if fault.cls in ("silent_cut", "link_down"):
        dead.add(frozenset(fault.target))
    elif fault.cls == "partition":
        side = set(fault.target)
        dead |= {frozenset((a, b)) for a, b in edges if (a in side) != (b in side)}
    elif fault.cls == "node_crash" and fault.params.get("mode") == "node":
        dead |= {frozenset(e) for e in edges if fault.target[0] in e}
    return [(a, b) for a, b in edges if frozenset((a, b)) not in dead]


class Runner:
    def __init__(self, exp: dict[str, Any], mesh: Mesh, opts: Options | None = None,
                 name: str = "chaos", log: Callable[[str], None] = lambda _: None,
                 dry_run: bool = False, alerts_since: float | None = None) -> None:
        self.exp = exp
        # Alerts active since then (Unix seconds) are this run's (or its suite's) doing;
        # None: from when the run starts.
        self.alerts_since = alerts_since
        self.mesh = mesh
        self.topo = Topo(mesh.state)
        self.opts = opts or Options()
        self.name = name
        self.log = log
        self.dry_run = dry_run
        self.j = JournalBuilder(exp)
        self.touched: set[str] = set()
        self.probe_pairs = self._probe_pairs()

    def _probe_pairs(self) -> list[tuple[str, str, float]]:
        import networkx as nx

        out = []
        for p in self.exp.get("probes") or [{"src": "auto", "dst": "auto"}]:
            src, dst = p.get("src", "auto"), p.get("dst", "auto")
            if "auto" in (src, dst):
                # The two farthest nodes of the largest part of the mesh without bridges
                # (2-edge-connected): a flow that a single link cut can reroute.
                core = max(nx.k_edge_components(self.topo.graph, 2), key=len)
                if len(core) < 2:
                    core = set(self.topo.graph)
                lengths = dict(nx.all_pairs_shortest_path_length(self.topo.graph))
                src, dst = max(((u, v) for u in core for v in core if u != v),
                               key=lambda q: (lengths[q[0]][q[1]], q))
            out.append((src, dst, float(p.get("interval_s", probes.INTERVAL_S))))
        return out

    # -- the hypothesis -----------------------------------------------------------
    def steady_state(self, when: str) -> bool:
        ss = self.exp["steady_state"]
        deadline = time.monotonic() + float(ss["timeout_s"])
        while True:
            recs: list[dict[str, Any]] = []
            if ss["agents_ready"] and self.mesh.api is not None:
                with self.j.record(recs, "probe", "agents-ready") as a:
                    ready = self.mesh.readiness()
                    bad = sorted(n for n, r in ready.items() if not r["ready"])
                    a.output = {"not_ready": bad, "why": {n: ready[n]["why"] for n in bad}}
                    a.tolerance_met = not bad
            if ss["no_maintenance_window"] and self.mesh.api is not None:
                # An operator is changing the fleet, and the loops record faults without
                # acting on them: no experiment now (README, "Maintenance windows").
                with self.j.record(recs, "probe", "no-maintenance-window") as a:
                    windows = self.mesh.maintenance()
                    a.output = {"open": windows}
                    a.tolerance_met = not windows
            if ss["all_pairs_routed"]:
                with self.j.record(recs, "probe", "all-pairs-routed-no-loops") as a:
                    pic = routes.picture(self.mesh.hops(), self.topo.graph,
                                         usable_links(self.topo, None))
                    a.output = {"connected": pic.connected, "routed": pic.routed,
                                "looping": len(pic.looping), "holes": len(pic.holes),
                                "examples": [list(x) for x in (pic.looping + pic.holes)[:5]]}
                    a.tolerance_met = pic.converged
            if ss["probes_reachable"]:
                with self.j.record(recs, "probe", "probes-reachable") as a:
                    bad = [f"{s}->{d}" for s, d, _ in self.probe_pairs
                           if "1 received" not in self.mesh.sh(
                               s, "ping", "-n", "-q", "-c", "1", "-W", "1", "-I",
                               self.mesh.address(s), self.mesh.address(d))]
                    a.output = {"unreachable": bad}
                    a.tolerance_met = not bad
            if ss["no_alerts_firing"]:
                with self.j.record(recs, "probe", "no-alerts-firing") as a:
                    self._alerts(a, ss["alerts_ignore"])
            met = all(r.get("tolerance_met") for r in recs)
            if met or time.monotonic() > deadline:
                return self.j.steady(when, recs)
            time.sleep(1.0)

    def _alerts(self, a: Activity, ignore: list[str]) -> None:
        """No alert firing on the mesh's Prometheus; skipped (and said so) without one, failed
        when the one configured does not answer."""
        if self.mesh.prometheus is None:
            a.output = {"skipped": "no Prometheus URL configured (--prometheus)"}
            a.tolerance_met = True
            return
        try:
            alerts = self.mesh.alerts()
        except (OSError, ValueError) as exc:
            a.output = {"prometheus": self.mesh.prometheus, "error": str(exc)}
            a.tolerance_met = False
            return
        since = self.alerts_since
        firing = promapi.firing(alerts, ignore, before=since)
        a.output = {"prometheus": self.mesh.prometheus, "firing": firing, "ignored": ignore}
        if since is not None:
            a.output["raised_by_the_run"] = promapi.firing(alerts, ignore, since=since)
        a.tolerance_met = not firing

    # -- the run ---------------------------------------------------------------------
    def run(self) -> Outcome:
        with interrupts() as intr:
            return self._run(intr)

    def _run(self, intr: Interrupts | None) -> Outcome:
        if self.alerts_since is None:
            self.alerts_since = time.time()
        out = Outcome(self.j.doc)
        status, deviated = "completed", False
        try:
            if intr is not None:
                if intr.received:  # interrupted before this run began (cmd_run, between runs)
                    raise KeyboardInterrupt
                intr.armed = True
            if not self.steady_state("before"):
                failing = [p["activity"]["name"] for p in
                           self.j.doc["steady_states"]["before"]["probes"]
                           if not p.get("tolerance_met")]
                self.log(f"steady state does not hold ({', '.join(failing)}): nothing "
                         "injected")
                return Outcome(self.j.finish("failed", False))
            if self.dry_run:
                plan = [s.__dict__ for s in xp.schedule(self.exp, self.topo)]
                self.j.doc["measurements"]["dry_run_schedule"] = plan
                return Outcome(self.j.finish("completed", False))
            out.steps = self._steps()
        except KeyboardInterrupt:
            status = "interrupted"
        except Exception as exc:  # recorded, then the rollback runs all the same
            self.j.doc["run"].append({"activity": {"type": "action", "name": "runner"},
                                      "status": "failed", "output": None,
                                      "exception": [f"{type(exc).__name__}: {exc}"],
                                      "start": iso(time.time()), "end": iso(time.time()),
                                      "duration": 0.0})
            status = "aborted"
        finally:
            if intr is not None:
                intr.armed = False  # from here on a signal is counted, never raised
            if self.touched or status != "completed":
                self.log(f"{status}: rolling back {len(self.touched)} node(s)")
            self._rollback()
        if status == "completed":  # nothing is on the nodes any more: an interrupt may stop it
            try:
                if intr is not None:
                    intr.armed = True
                deviated = not self.steady_state("after")
            except KeyboardInterrupt:
                status = "interrupted"
            finally:
                if intr is not None:
                    intr.armed = False
        self.j.doc["measurements"]["steps"] = out.steps
        return Outcome(self.j.finish(status, deviated), out.steps)

    def _rollback(self) -> None:
        for node, res in rollback(self.mesh.nodes, sorted(self.touched)).items():
            with self.j.record(self.j.doc["rollbacks"], "action", f"rollback {node}") as a:
                a.output = res.data
                if res.rc != 0:
                    a.status = "failed"

    def _steps(self) -> list[dict[str, Any]]:
        radius = self.exp["blast_radius"]
        exclude = set(radius.get("exclude", [])) | {x for s, d, _ in self.probe_pairs
                                                    for x in (s, d)}
        trackers = [(s, d, probes.Probe(self.mesh.prefix_of(s), self.mesh.address(s),
                                        self.mesh.address(d), interval=i))
                    for s, d, i in self.probe_pairs]
        results: list[dict[str, Any]] = []
        try:
            time.sleep(1.0)  # the probes' first replies before the first fault
            for step in xp.schedule(self.exp, self.topo):
                results.append(self._step(step, exclude))
        finally:
            traces = [(s, d, t.stop()) for s, d, t in trackers]
        for res in results:
            res["recover_s"] = {}
            for s, d, tr in traces:
                if res.get("skipped"):
                    continue
                if res["class"] == "partition":  # the heal: from removal to first success
                    v = probes.heal_s(tr, res["removed_at"])
                else:
                    v = probes.recover_s(tr, res["injected_at"], res["removed_at"])
                res["recover_s"][f"{s}->{d}"] = None if math.isinf(v) else round(v, 4)
        self.j.doc["measurements"]["service_levels"] = {
            f"{s}->{d}": probes.service_levels(tr).__dict__ for s, d, tr in traces}
        self.j.doc["measurements"]["probe_traces"] = {
            f"{s}->{d}": [[round(t, 3), r] for t, _, r in tr.replies] for s, d, tr in traces[:1]}
        return results

    def _step(self, step: xp.Step, exclude: set[str]) -> dict[str, Any]:
        target = step.target
        if step.path_position is not None:
            s, d, _ = self.probe_pairs[0]
            path = self.mesh.path(self.mesh.hops(), s, d)
            resolved = (xp.on_path(step, path, exclude, self.topo.graph) if path[-1] == d
                        else None)
            if resolved is None:
                return {"step": step.index, "class": step.cls,
                        "skipped": f"no protected element on the path {path}"}
            target = resolved
        fault = Fault(step.cls, tuple(target), f"{self.name}-{step.index}", step.params)
        plan = faults.plan(fault, self.topo, self.opts)
        radius = self.exp["blast_radius"]
        if len(plan) > radius["max_nodes"] or set(plan) & set(radius.get("exclude", [])):
            return {"step": step.index, "class": step.cls, "target": list(target),
                    "skipped": f"blast radius: touches {sorted(plan)}"}
        cursors = {n: self.mesh.event_cursor(n) for n in self._watchers(fault)}
        res: dict[str, Any] = {"step": step.index, "class": step.cls, "target": list(target),
                               "fault_id": fault.id, "params": dict(step.params)}
        with self.j.record(self.j.doc["run"], "action", f"inject {fault.label()}",
                           fault_id=fault.id, duration_s=step.duration_s) as a:
            self.touched |= set(plan)
            t_inject = time.time()
            r = inject(self.mesh.nodes, fault, plan, t_inject + step.duration_s
                       + DEADLINE_GRACE_S, self.name)
            a.output = [x.data for x in r]
            if refused := [x for x in r if not x.ok]:
                a.status = "failed"
                why = sorted({str(x.data.get("error") or f"rc {x.rc}") for x in refused})
                res["skipped"] = "injection refused: " + "; ".join(why)[:300]
                return res
        res["injected_at"] = t_inject
        applied = [float(x.data["applied_at"]) for x in r if "applied_at" in x.data]
        if len(applied) > 1:  # how far apart the nodes put it on (inject: all at once)
            res["applied_spread_s"] = round(max(applied) - min(applied), 4)
        self.log(f"step {step.index}: {fault.label()} for {step.duration_s} s")
        usable = usable_links(self.topo, fault)
        res["reconverge_s"], res["loops_seen"] = self._reconverge(usable, t_inject,
                                                                  t_inject + step.duration_s)
        time.sleep(max(0.0, t_inject + step.duration_s - time.time()))
        with self.j.record(self.j.doc["run"], "action", f"remove {fault.label()}",
                           fault_id=fault.id) as a:
            t_remove = time.time()
            a.output = [x.data for x in remove(self.mesh.nodes, fault, plan)]
        res["removed_at"] = t_remove
        full = usable_links(self.topo, None)
        res["reconverge_after_remove_s"], _ = self._reconverge(full, t_remove,
                                                               t_remove + RECONVERGE_MAX_S)
        res["detect_s"] = self._detect(fault, cursors, t_inject)
        time.sleep(step.settle_s)
        return res

    def _watchers(self, fault: Fault) -> list[str]:
        """The nodes whose event logs see the fault first: its ends, or a node's neighbours."""
        if self.mesh.api is None:
            return []
        if faults.CLASSES[fault.cls].target == "node":
            return self.topo.neighbours(fault.target[0])
        if fault.cls == "partition":
            side = set(fault.target)
            return sorted({n for e in self.topo.graph.edges if (e[0] in side) != (e[1] in side)
                           for n in e})
        return list(fault.target)

    def _detect(self, fault: Fault, cursors: dict[str, int], t0: float) -> float | None:
        first = math.inf
        for node, after in cursors.items():
            for ev in self.mesh.events(node, after, ["link_down", "failover"]):
                if float(ev.get("wall", 0)) >= t0 - 0.01:
                    first = min(first, float(ev["wall"]))
        return None if math.isinf(first) else round(first - t0, 4)

    def _reconverge(self, usable: list[tuple[str, str]], t0: float,
                    until: float) -> tuple[float | None, int]:
        """Seconds from ``t0`` until every connected pair routes (None: not by ``until``)."""
        loops = 0
        while True:
            now = time.time()
            pic = routes.picture(self.mesh.hops(), self.topo.graph, usable)
            loops = max(loops, len(pic.looping))
            if pic.converged:
                return round(now - t0, 3), loops
            if now >= until:
                return None, loops
            time.sleep(SAMPLE_S)
