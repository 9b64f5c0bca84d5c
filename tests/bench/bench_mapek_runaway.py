#!/usr/bin/env python3
"""bench_mapek_runaway: can the learned policy find restart_unit where the rule is wrong?

Issue 19's learning criterion on a fault where the rule table's answer does not end the
incident: a unit stuck in a real-time busy loop (the chaos ``runaway_unit`` fault). The
rule for a starved node is ``lengthen_hello``: it keeps neighbours from declaring us
dead but ends nothing. ``restart_unit`` (disruptive, under a lease from the gateways'
etcd) ends it. Measured on the running podman lab (systemd on every node), both
policies in the same run and at the same time:

- two nodes that are neither gateways nor the monitor, one armed ``fixed`` (the rule
  table, the control arm) and one ``learned`` (Thompson sampling from the rule-table
  prior; its Knowledge emptied first unless ``--keep-knowledge``), through site.yml
  ``--limit`` as an operator would, both ``enforce`` with the same allowlisted unit
  (``meshcore-lab-app.service``, a runtime unit the bench starts as the agent's user);
- each round, the fault on both at once, on different CPUs (the fixed node's on CPU 0,
  the learned one's on the last), held ``--hold`` seconds unless the unit is restarted,
  then ``--settle`` seconds for the incidents to close;
- ``labctl realtime`` grants each of the two containers ``--rt-us`` of real-time runtime
  per second (cgroup v1 hosts ration it; the runaway gets that much of its CPU, the
  rest is the agent's), and takes it back at the end.

One JSON line per round and policy (stdout): the starved_node incidents of the node
detected from the injection to the end of the settle (``incidents``), the actions and
their outcomes, ``mttr_p50_s``/``mttr_max_s`` over those that recovered, ``still_open``,
``detect_s`` (injection to the first detection; its signal, value and threshold),
``runaway_s`` (injection to the end of the busy loop: the unit's restart, else the
removal at ``--hold``) and ``ended_by``
(restart | removal); ``others``: the round's incidents of other classes, ``charges``: the
collateral charges the loop made in the round, ``stats``: the node's starved_node arms
(action: [tries, successes]) after it, and for the learned node ``p_next``: the chance
its policy picks each action at the next incident (:func:`choice_probabilities`);
``false_alarms``: incidents of the node detected
outside every fault window and its settle. Then a ``summary`` per policy over the first and last
``--window`` rounds and all of them (runaway_s p50/p95, the rounds' worst MTTR p95,
restarts), with false alarms per node-hour, and ``--plot`` a PNG of runaway_s and MTTR
per round. ``--summary-of FILE`` prints the summary lines again from a run's output.

Needs root and a running lab with gateways (``make lab NODES=6``); without one it prints
one ``skipped`` line. Everything it changes is put back in ``finally``: the faults
removed (each also carries a node-side deadline its reaper keeps), the unit stopped, the
real-time grants zeroed, the two nodes re-converged with the lab's settings.
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
from pathlib import Path
from typing import Any

from meshcore_testkit.containerlab import (
    agent_ready,
    arm_mapek,
    chaos_nodes,
    charges,
    incidents,
    install_chaos,
    labctl,
    loop_view,
    runaway,
    site_run,
    start_app_unit,
    stop_app_unit,
    with_agent_stopped,
)
from meshcore_tools.chaos import probes
from meshcore_tools.lab.plan import pick_gateways
from meshcore_tools.lab.state import MONITOR, load_state

APP = "meshcore-lab-app.service"
# The action statistics and tuned thresholds dropped (incidents and events stay).
FORGET = ("import sqlite3; c = sqlite3.connect('/var/lib/mesh-agent/agent.db'); "
          "c.execute('DELETE FROM action_stats'); c.execute('DELETE FROM thresholds'); "
          "c.commit(); c.close()")
POLICIES = ("fixed", "learned")


def log(msg: str) -> None:
    print(f"[bench_mapek_runaway {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr,
          flush=True)


def emit(**fields: Any) -> None:
    print(json.dumps({"bench": "mapek_runaway", **fields,
                      "load1": round(os.getloadavg()[0], 2)}), flush=True)


def quantile(values: list[float], q: float) -> float | None:
    return round(probes.quantile(values, q), 1) if values else None


def arm(node: str, policy: str, tmp: Path, keep_knowledge: bool) -> None:
    arm_mapek(node, policy, [APP], tmp / f"arm-{node}")
    if not keep_knowledge:  # what this node learned before (an earlier run) forgotten
        forgot = with_agent_stopped(node, FORGET)
        if forgot.returncode != 0:
            raise SystemExit(f"{node}: forgetting the action statistics: {forgot.stderr}")


def one_fault(node: str, cpu: int, rnd: int, hold: float, out: dict[str, Any]) -> None:
    """The fault on *node* for one round (a thread's target): *out* filled with
    :func:`runaway`'s answer."""
    out.update(runaway(node, APP, hold, f"rw{rnd}{node}{int(time.time()) % 100000}",
                       "bench_mapek_runaway", cpu=cpu, nodes=chaos_nodes()))


def round_line(rnd: int, policy: str, node: str, res: dict[str, Any],
               view: dict[str, Any], blamed: list[dict[str, Any]],
               end_wall: float) -> dict[str, Any]:
    """The round's figures from *res* (the fault), *view* (the node's ``meshctl --json
    incidents`` after the settle) and *blamed* (its collateral charges)."""
    t0 = float(res.get("injected_wall", 0.0))
    incs = list(view.get("incidents", []))
    during = [i for i in incs if t0 <= i["detected_wall"] <= end_wall]
    mine = [i for i in during if i["class"] == "starved_node"]
    mttrs = [float(i["mttr_seconds"]) for i in mine if i["mttr_seconds"] is not None]
    actions: dict[str, int] = {}
    for i in mine:
        a = i["action"] or {}
        key = f"{a.get('kind', 'none')}:{a.get('outcome', '-')}"
        actions[key] = actions.get(key, 0) + 1
    first_inc = min(mine, key=lambda i: i["detected_wall"], default=None)
    first = None if first_inc is None else first_inc["detected_wall"]
    signal = (first_inc or {}).get("signal") or {}
    return {"figure": "round", "round": rnd, "policy": policy, "node": node, "incidents": len(mine),
            "actions": actions, "mttr_p50_s": quantile(mttrs, 0.5),
            "mttr_max_s": round(max(mttrs), 1) if mttrs else None,
            "still_open": sum(1 for i in mine if i["mttr_seconds"] is None),
            "detect_s": None if first is None else round(first - t0, 1),
            # the signal that raised the first one, and its threshold then (Knowledge tunes it)
            "signal": signal.get("name"), "signal_value": signal.get("value"),
            "threshold": signal.get("threshold"),
            "runaway_s": res.get("runaway_s"), "ended_by": res.get("ended_by"),
            "error": res.get("error"),
            # Everything else the round raised on the node, and what the loop charged to an
            # action meanwhile (a failure not from the incident's own outcome).
            "others": [{"class": i["class"], "target": i["target"],
                        "action": (i["action"] or {}).get("kind"),
                        "outcome": (i["action"] or {}).get("outcome"),
                        "detect_s": round(i["detected_wall"] - t0, 1),
                        "mttr_s": i["mttr_seconds"]}
                       for i in during if i["class"] != "starved_node"],
            "charges": [{k: c.get(k) for k in ("action", "by_class", "after_seconds")}
                        for c in blamed if t0 <= float(c["wall"]) <= end_wall],
            # What the node has learned for the class by the end of the round.
            "stats": {a["action"]: [a["tries"], a["successes"]]
                      for a in view.get("action_stats", []) if a["class"] == "starved_node"}}


def choice_probabilities(arms: dict[str, list[int]], draws: int = 20000,
                         seed: int = 0) -> dict[str, float]:
    """The chance the learned policy picks each starved_node action at the next incident,
    from the node's arms (action: [tries, successes], a round line's ``stats``): the
    agent's own :class:`~mesh_agent.mapek.plan.ThompsonPolicy` drawn *draws* times (seeded,
    so a figure is reproducible). Less noisy than the rounds' choices, one draw each: this
    is what the policy has learned by then."""
    from mesh_agent.mapek.analyze import IncidentClass
    from mesh_agent.mapek.plan import ActionStats, ThompsonPolicy

    cls = IncidentClass.STARVED
    stats = {(str(cls), a): ActionStats(int(t), int(s)) for a, (t, s) in arms.items()}
    policy = ThompsonPolicy(random.Random(seed))
    counts: dict[str, int] = {}
    for _ in range(draws):
        pick = policy.choose(cls, stats)
        counts[pick] = counts.get(pick, 0) + 1
    return {a: round(n / draws, 3) for a, n in sorted(counts.items())}


def summary(rows: list[dict[str, Any]], window: int, alarms: int | None, hours: float | None,
            policy: str) -> dict[str, Any]:
    """One policy's figures over its round lines: how long the node was starved
    (``runaway_s``) and the worst incident MTTR per round, p50 and p95 over the first and
    last *window* rounds, and the rounds the unit's restart ended (``restarts``)."""
    out: dict[str, Any] = {"figure": "summary", "policy": policy, "rounds": len(rows),
                           "window": window}
    for part, sel in (("first", rows[:window]), ("last", rows[-window:]), ("all", rows)):
        run = [float(r["runaway_s"]) for r in sel if r.get("runaway_s") is not None]
        mttr = [float(r["mttr_max_s"]) for r in sel if r.get("mttr_max_s") is not None]
        out |= {f"runaway_s_p50_{part}": quantile(run, 0.5),
                f"runaway_s_p95_{part}": quantile(run, 0.95),
                f"mttr_max_s_p95_{part}": quantile(mttr, 0.95),
                f"restarts_{part}": sum(1 for r in sel if r.get("ended_by") == "restart"),
                f"still_open_{part}": sum(int(r.get("still_open") or 0) for r in sel)}
    # What the learned policy would pick next after its last round (from its arms).
    learnt = [r for r in rows if r.get("stats") and policy == "learned"]
    out["p_next_after_first"] = p_next(learnt[:window][-1]) if learnt[:window] else None
    out["p_next_after_last"] = p_next(learnt[-1]) if learnt else None
    out["false_alarms"] = alarms
    out["false_alarms_per_node_hour"] = (round(alarms / hours, 2)
                                         if alarms is not None and hours else None)
    return out


def p_next(row: dict[str, Any]) -> dict[str, float]:
    """A learned round line's ``p_next``, computed from its ``stats`` for a line written
    before the bench recorded it."""
    return dict(row.get("p_next") or choice_probabilities(row["stats"]))


def resummarise(path: Path, window: int, plot_to: Path | None = None,
                hold: float = 150.0) -> int:
    """``--summary-of``: the summary lines again from a run's round lines (its false alarm
    counts and duration from its own summary lines where they have them), and the plot
    with ``--plot``."""
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]
    rounds = [x for x in lines if "round" in x and "policy" in x]
    for r in rounds:
        if r["policy"] == "learned" and r.get("stats"):
            r["p_next"] = p_next(r)
    if plot_to is not None and rounds:
        plot(rounds, hold, plot_to)
    for policy in POLICIES:
        old: dict[str, Any] = next(
            (x for x in lines if policy in (x.get("summary"), x.get("policy"))
             and ("summary" in x or x.get("figure") == "summary")), {})
        per_h = old.get("false_alarms_per_node_hour")
        alarms = old.get("false_alarms")
        hours = alarms / per_h if alarms and per_h else None
        line = summary([r for r in rounds if r["policy"] == policy], window, alarms, hours,
                       policy)
        if alarms == 0:
            line["false_alarms_per_node_hour"] = 0.0
        emit(**line, summary_of=path.name)
    return 0


def plot(rows: list[dict[str, Any]], hold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for policy, colour in zip(POLICIES, ("tab:red", "tab:blue"), strict=True):
        mine = [r for r in rows if r["policy"] == policy]
        ax.plot([r["round"] for r in mine], [r["runaway_s"] or math.nan for r in mine],
                "o-", color=colour, label=f"{policy}: starved for (s)")
        ax.plot([r["round"] for r in mine], [r["mttr_max_s"] or math.nan for r in mine],
                "x--", color=colour, alpha=0.6, label=f"{policy}: incident MTTR, max (s)")
    ax.axhline(hold, color="grey", lw=0.8, ls=":", label=f"the fault's hold ({hold:g} s)")
    ax.set_xlabel("round")
    ax.set_ylabel("seconds")
    ax.set_title("a runaway real-time unit: fixed (lengthen_hello) vs learned")
    handles, labels = ax.get_legend_handles_labels()
    learnt = [r for r in rows if r["policy"] == "learned" and r.get("p_next")]
    if learnt:  # what the learned policy would pick next, after each round
        p = ax.twinx()
        p.plot([r["round"] for r in learnt],
               [r["p_next"].get("restart_unit", 0.0) for r in learnt], "s:",
               color="tab:green", label="learned: P(restart_unit next)")
        p.set_ylim(0, 1.05)
        p.set_ylabel("probability")
        more, more_labels = p.get_legend_handles_labels()
        handles, labels = handles + more, labels + more_labels
    ax.legend(handles, labels, fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--hold", type=float, default=150.0,
                    help="seconds a fault lasts unless the unit is restarted")
    ap.add_argument("--settle", type=float, default=40.0)
    ap.add_argument("--rt-us", type=int, default=450_000,
                    help="real-time runtime per second granted to each victim's container")
    ap.add_argument("--nodes", nargs=2, metavar=("FIXED", "LEARNED"))
    ap.add_argument("--window", type=int, default=3)
    ap.add_argument("--keep-knowledge", action="store_true")
    ap.add_argument("--first-round", type=int, default=1, help="the first round's number "
                    "(a run that goes on from an earlier one's Knowledge: --keep-knowledge)")
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--work", type=Path, default=Path("build/bench-runaway"))
    ap.add_argument("--summary-of", type=Path, help="only the summary lines again, from a "
                    "run's output")
    args = ap.parse_args()
    if args.summary_of:
        return resummarise(args.summary_of, args.window, args.plot, args.hold)
    if os.geteuid() != 0:
        emit(figure="skipped", reason="needs root (podman)")
        return 0
    try:
        state = load_state()
    except OSError:
        emit(figure="skipped", reason="no running lab (make lab NODES=6)")
        return 0
    gateways = set(pick_gateways(state))
    spare = [n for n in sorted(state["nodes"]) if n not in gateways and n != MONITOR]
    victims = list(args.nodes) if args.nodes else spare[:2]
    if len(victims) < 2 or not gateways:
        emit(figure="skipped", reason=f"needs 2 nodes besides the gateways and the monitor, "
             f"and gateways (the lab has {sorted(state['nodes'])})")
        return 0
    by_policy = dict(zip(POLICIES, victims, strict=True))
    cpus = {"fixed": 0, "learned": (os.cpu_count() or 2) - 1}
    args.work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    windows: list[tuple[float, float]] = []
    started = time.time()
    try:
        for node in victims:
            start_app_unit(node, APP, "an application stand-in for bench_mapek_runaway", 7200)
        log(f"arming {by_policy} (site.yml --limit, enforce, restart_units [{APP}])")
        for policy, node in by_policy.items():
            arm(node, policy, args.work, args.keep_knowledge)
        labctl("realtime", *(f"{n}={args.rt_us}" for n in victims))
        install_chaos(victims)  # the node side of the chaos tools, as make chaos does
        for node in victims:
            agent_ready(node)
        time.sleep(30)  # the loop arms 15 s after the agent is ready; a quiet baseline
        started = time.time()
        for rnd in range(args.first_round, args.first_round + args.rounds):
            results: dict[str, dict[str, Any]] = {p: {} for p in POLICIES}
            threads = [threading.Thread(target=one_fault, args=(
                by_policy[p], cpus[p], rnd, args.hold, results[p]))
                for p in POLICIES]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            t0 = min(float(r.get("injected_wall", time.time())) for r in results.values())
            time.sleep(args.settle)
            end = time.time()
            windows.append((t0, end))
            for policy, node in by_policy.items():
                line = round_line(rnd, policy, node, results[policy], loop_view(node, 500),
                                  charges(node), end)
                if policy == "learned":
                    line["p_next"] = choice_probabilities(line["stats"])
                rows.append(line)
                emit(**line)
            log(f"round {rnd}: " + ", ".join(
                f"{r['policy']} starved {r['runaway_s']} s ({r['ended_by']}), {r['actions']}"
                for r in rows[-2:]))
        hours = max(1e-9, time.time() - started) / 3600
        for policy, node in by_policy.items():
            incs = incidents(node, 500)
            alarms = sum(1 for i in incs if i["detected_wall"] >= started and not any(
                a <= i["detected_wall"] <= b for a, b in windows))
            emit(**summary([r for r in rows if r["policy"] == policy], args.window, alarms,
                           hours, policy))
        if args.plot and rows:
            plot(rows, args.hold, args.plot)
    finally:
        log("putting the lab back")
        with contextlib.suppress(RuntimeError):
            labctl("realtime")
        for node in victims:
            stop_app_unit(node, APP)
            rc, _ = site_run({}, args.work / f"disarm-{node}", limit=f"{node},localhost")
            if rc != 0:
                log(f"{node}: re-converging with the lab's settings failed (rc {rc})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as exc:  # the lab refused a step (labctl, site.yml, a unit)
        raise SystemExit(f"bench_mapek_runaway: {exc}") from None
