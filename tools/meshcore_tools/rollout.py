"""Run ``playbooks/rollout.yml`` with ansible-runner and report per wave and per host.

The report comes from ansible-runner's event stream (``runner_on_ok``,
``runner_on_failed``, ``runner_on_unreachable``... with each task's result), never
from Ansible's console output. :func:`build_report` is a pure function of the
events, so it is tested on recorded or synthetic event lists; :func:`run` is the
I/O around it.

    meshcore-rollout --inventory inventories/lab --tarball build/release/mesh-core-v0.2.0.tgz \\
        --keys release-keys.json --report build/rollout/report.json

The playbook's task names are the contract (:data:`TASKS`): renaming one there
without here fails ``tests/test_rollout_report.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from meshcore_tools.playbook import run_playbook

PLAYBOOK = "playbooks/rollout.yml"
TASKS = {
    "staged": "Check the release is staged",
    "discard": "Discard the release staged on the nodes the rollout did not reach",
    "wave": "Record the wave",
    "before": "Remember the release to roll back to",
    "target": "Name the target release",
    "rounds": "Plan the switch rounds",
    "switch": "Switch to the release, one round at a time",
    "verdict": "Gate: verdict",
    "rollback": "Roll the wave back to the release it ran before",
    "stop": "Stop the rollout when the gate failed",
    "done": "Mark the node done",
}
MESH_TASKS = frozenset(TASKS.values())
HOST_EVENTS = {"runner_on_ok": "ok", "runner_on_failed": "failed",
               "runner_on_unreachable": "unreachable", "runner_on_skipped": "skipped"}


def _time(event: Mapping[str, Any]) -> float | None:
    created = event.get("created")
    if not isinstance(created, str):
        return None
    try:
        return datetime.fromisoformat(created).timestamp()
    except ValueError:
        return None


def _stdout_json(res: Mapping[str, Any]) -> dict[str, Any]:
    try:
        doc = json.loads(res.get("stdout") or "{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def build_report(events: Iterable[Mapping[str, Any]], hosts_all: Sequence[str] = ()
                 ) -> dict[str, Any]:
    """The rollout's outcome from its events: ``status`` (completed, stopped or
    failed; :func:`run` makes it canceled when a signal stopped the run), ``stage``
    (the staging play before the waves: its times and how many
    nodes staged the release), ``waves`` (hosts, status, gate verdict, times),
    ``hosts`` (wave, whether it staged the release, release before and target,
    status, the switch and rollback results, whether a stopped rollout discarded its
    staged copy, failed tasks)
    and ``controller`` (hosts that ran none of the mesh play's tasks and are not in
    *hosts_all*, such as the final check's localhost: ok or failed, with failed tasks;
    a failure there fails the rollout). *hosts_all* lists the hosts meant to be
    rolled, so those never reached show."""
    waves: list[dict[str, Any]] = []
    wave_of: dict[str, int] = {}
    hosts: dict[str, dict[str, Any]] = {}
    stats: dict[str, Any] = {}
    rolled: set[str] = set()  # hosts that ran a task of the mesh play

    def host(name: str) -> dict[str, Any]:
        return hosts.setdefault(name, {"wave": None, "staged": None, "before": None,
                                       "target": None, "status": "not_reached", "switch": None,
                                       "rollback": None, "unstaged": False, "failed_tasks": []})

    stage: dict[str, Any] = {"started": None, "ended": None, "hosts": 0}

    for ev in events:
        kind = ev.get("event")
        data = ev.get("event_data") or {}
        if kind == "playbook_on_stats":
            stats = {k: data.get(k) or {} for k in ("ok", "changed", "failures", "dark",
                                                    "skipped", "rescued", "ignored")}
            continue
        if kind not in HOST_EVENTS:
            continue
        name, task = data.get("host"), data.get("task")
        res = data.get("res") or {}
        if not isinstance(name, str):
            continue
        outcome = HOST_EVENTS[str(kind)]
        t = _time(ev)
        if stage["started"] is None and not waves and t is not None:
            stage["started"] = t
        if task in MESH_TASKS:
            rolled.add(name)
        if task == TASKS["wave"] and outcome == "ok":
            members = list((res.get("ansible_facts") or {}).get("rollout_wave") or [name])
            key = tuple(members)
            if not waves or tuple(waves[-1]["hosts"]) != key:
                waves.append({"index": len(waves) + 1, "hosts": members, "status": "running",
                              "gate": None, "rounds": None, "started": t, "ended": t,
                              "rolled_back": []})
                for m in members:
                    wave_of[m] = len(waves)
                    host(m)["wave"] = len(waves)
                    host(m)["status"] = "started"
        h = host(name)
        w = waves[wave_of[name] - 1] if name in wave_of else None
        if w is not None and t is not None:
            w["ended"] = t if w["ended"] is None else max(w["ended"], t)
        if task == TASKS["discard"]:
            # run_once and delegated: an unreachable target makes the looped task
            # unreachable for the host that ran it, which itself is fine
            for item in res.get("results") or []:
                pair = item.get("item") if isinstance(item, dict) else None
                if (isinstance(pair, list) and pair and isinstance(pair[0], str)
                        and item.get("changed")):
                    host(pair[0])["unstaged"] = True
            continue
        if outcome == "unreachable":
            h["status"] = "unreachable"
            h["failed_tasks"].append({"task": task, "msg": res.get("msg", "unreachable")})
            continue
        if outcome == "failed" and not data.get("ignore_errors"):
            if task == TASKS["stop"]:
                if h["status"] not in ("rolled_back", "unreachable"):
                    h["status"] = "stopped"
            else:  # an unreachable host stays so, with the task that stopped it
                if h["status"] != "unreachable":
                    h["status"] = "failed"
                h["failed_tasks"].append({"task": task, "msg": res.get("msg") or
                                          res.get("stderr") or ""})
            continue
        if outcome != "ok":
            continue
        facts = res.get("ansible_facts") or {}
        if task == TASKS["staged"]:
            h["staged"] = bool((res.get("stat") or {}).get("exists"))
            stage["hosts"] += h["staged"]
            if t is not None:
                stage["ended"] = t
        elif task == TASKS["before"]:
            h["before"] = facts.get("rollout_previous")
        elif task == TASKS["target"]:
            h["target"] = facts.get("rollout_target")
        elif task == TASKS["switch"]:
            doc = _stdout_json(res)
            h["switch"] = {"rc": res.get("rc"), "changed": doc.get("changed"),
                           "ready_after_s": doc.get("ready_after_s"),
                           "error": (res.get("stderr") or None) if res.get("rc") else None,
                           "at": t}
            if h["status"] == "started":
                h["status"] = "switched"
        elif task == TASKS["rounds"] and w is not None:
            w["rounds"] = facts.get("rollout_rounds")
        elif task == TASKS["verdict"] and w is not None:
            w["gate"] = res.get("rollout_verdict")
            w["gate_at"] = t
        elif task == TASKS["rollback"] and h["status"] != "unreachable":
            doc = _stdout_json(res)
            h["rollback"] = {"changed": doc.get("changed"), "to": doc.get("current"),
                             "ready_after_s": doc.get("ready_after_s"), "at": t}
            h["status"] = "rolled_back"
            if w is not None:
                w["rolled_back"].append(name)
        elif task == TASKS["done"] and h["status"] != "unreachable":
            h["status"] = "upgraded"

    for name in hosts_all:
        host(name)
    # Hosts that ran none of the mesh play's tasks and are not mesh nodes to roll ran
    # only the controller's plays (localhost: the final check that every node was
    # rolled): reported apart, and their failures fail the rollout.
    controller = {n: {"status": "failed" if h["failed_tasks"] or h["status"] in (
        "failed", "stopped", "unreachable") else "ok", "failed_tasks": h["failed_tasks"]}
        for n, h in hosts.items() if n not in rolled and n not in hosts_all}
    hosts = {n: h for n, h in hosts.items() if n not in controller}
    for w in waves:
        gate = w["gate"]
        members = [hosts[m] for m in w["hosts"]]
        if gate is not None and gate.get("ok") and all(m["status"] == "upgraded"
                                                       for m in members):
            w["status"] = "passed"
        elif w["rolled_back"]:
            w["status"] = "rolled_back"
        else:
            w["status"] = "failed"
        w["duration_s"] = (round(w["ended"] - w["started"], 3)
                           if w["started"] is not None and w["ended"] is not None else None)
        at = {n: hosts[n]["switch"]["at"] for n in w["hosts"]
              if hosts[n]["switch"] and hosts[n]["switch"]["at"]}
        switched = list(at.values())
        # The rounds as they ran: Ansible runs the included rounds in the order their
        # first host (in batch order) reaches them, not in the plan's order.
        w["rounds_run"] = sorted((r for r in w["rounds"] or [] if any(n in at for n in r)),
                                 key=lambda r: min(at[n] for n in r if n in at))
        w["gate_after_switch_s"] = (round(w["gate_at"] - max(switched), 3)
                                    if w.get("gate_at") is not None and switched else None)
    controller_ok = all(c["status"] == "ok" for c in controller.values())
    if waves and controller_ok and all(w["status"] == "passed" for w in waves) and all(
            h["status"] == "upgraded" for h in hosts.values()):
        status = "completed"
    elif any(w["status"] == "rolled_back" for w in waves):
        status = "stopped"
    else:
        status = "failed"
    if stage["ended"] is None:  # no staging play ran (or none of it finished)
        stage["started"] = None
    stage["duration_s"] = (round(stage["ended"] - stage["started"], 3)
                           if stage["started"] is not None and stage["ended"] is not None else None)
    targets = {h["target"] for h in hosts.values() if h["target"]}
    return {"status": status, "target": targets.pop() if len(targets) == 1 else sorted(targets),
            "stage": stage, "waves": waves, "hosts": dict(sorted(hosts.items())),
            "controller": dict(sorted(controller.items())), "stats": stats}


def run(inventory: Path, tarball: Path, keys: Path, *, extravars: Mapping[str, Any] | None = None,
        hosts_all: Sequence[str] = (), quiet: bool = True,
        on_event: Callable[[Mapping[str, Any]], None] | None = None,
        private_data_dir: Path | None = None) -> tuple[int, dict[str, Any]]:
    """Run the rollout; (ansible-playbook's rc, the report)."""
    events: list[Mapping[str, Any]] = []

    def handler(ev: Mapping[str, Any]) -> bool:
        events.append(ev)
        if on_event is not None:
            on_event(ev)
        return True  # keep runner's own artifact copy too

    variables = {"rollout_release_tarball": str(tarball.resolve()),
                 "mesh_agent_release_keys_file": str(keys.resolve()), **(extravars or {})}
    with tempfile.TemporaryDirectory(prefix="meshcore-rollout-") as tmp:
        r = run_playbook(PLAYBOOK, inventory.resolve(), private_data_dir or tmp,
                         extravars=variables, event_handler=handler, quiet=quiet)
    report = build_report(events, hosts_all)
    if r.canceled:
        # Ctrl-C or SIGTERM: runner killed ansible-playbook where it was; the nodes' windows
        # end by themselves (mesh_maintenance_window_s)
        report["status"] = "canceled"
    return r.rc, report


def inventory_hosts(inventory: Path, group: str = "mesh_nodes") -> list[str]:
    """The hosts of *group* in *inventory* (the inventory reader of ``meshctl fleet``), so
    the report lists the nodes a stopped rollout never reached."""
    from mesh_agent.ctl.fleet import inventory_nodes

    return sorted(inventory_nodes(str(inventory), group).addresses)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="meshcore-rollout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inventory", "-i", type=Path, required=True)
    p.add_argument("--tarball", type=Path, required=True, help="the signed release tarball")
    p.add_argument("--keys", type=Path, required=True, help="the trusted keys (release-keys.json)")
    p.add_argument("--report", type=Path, help="write the JSON report here (default: stdout)")
    p.add_argument("-e", "--extra", action="append", default=[], metavar="JSON",
                   help="extra variables as a JSON object (repeatable)")
    p.add_argument("--verbose", action="store_true", help="show the playbook's output")
    args = p.parse_args(argv)
    extra: dict[str, Any] = {}
    for e in args.extra:
        extra.update(json.loads(e))
    hosts = inventory_hosts(args.inventory, str(extra.get("rollout_hosts", "mesh_nodes")))
    rc, report = run(args.inventory, args.tarball, args.keys, extravars=extra,
                     hosts_all=hosts, quiet=not args.verbose)
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")
        print(f"{report['status']}: {len(report['waves'])} wave(s); report in {args.report}")
    else:
        print(text)
    if report["status"] == "canceled":
        return 130
    return 0 if rc == 0 and report["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
