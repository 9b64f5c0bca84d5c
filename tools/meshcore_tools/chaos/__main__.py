"""``python -m meshcore_tools.chaos``: the controller side of the chaos experiments.

    run EXPERIMENT.yml... [--out DIR] [--dry-run]    run experiments, write journals + report
    rollback                                         undo every fault on every node
    leftovers                                        what is on record or tagged, per node
    report JOURNAL.json... --out DIR                 tables + plots from journals
    check-journal JOURNAL.json...                    validate against the journal schema
    dataset --topology SPEC --seed N --out DIR       record a labelled dataset on a netns lab
    stress                                           random faults in a loop (the reaper test)

Targets (``run``, ``rollback``, ``leftovers``):

    --lab                       the container lab (build/lab/state.yml), the default
    --netns-tag TAG --state F   a netns lab (namespaces <TAG>-<node>; benchmarks, tests)
    --inventory INV --topology F  a fleet over SSH (hosts need the chaos_reaper role);
                                the topology file is a normalised one naming each link's
                                interfaces (node faults need only the node names)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fleet_ssh(listing: dict[str, Any]) -> Callable[[str], list[str]]:
    """The command prefix reaching a fleet node as Ansible does (``ansible_user``,
    ``ansible_port``, ``ansible_host`` from ``ansible-inventory --list``: meshctl's
    ``fleet.ssh_targets``), then ``sudo``; a node the inventory lacks by its name."""
    from mesh_agent.ctl.fleet import ssh_targets

    targets = ssh_targets(listing, dict.fromkeys(listing.get("_meta", {}).get("hostvars", {}),
                                                 ""))

    def ssh(node: str) -> list[str]:
        return ["ssh", "-o", "BatchMode=yes", *targets.get(node, [node]), "sudo"]

    return ssh


def _targets(a: argparse.Namespace) -> Any:
    """(Mesh, fault Options) for the chosen target."""
    from meshcore_tools import netns
    from meshcore_tools.chaos.faults import UNIT_AGENT_MATCH, Options
    from meshcore_tools.chaos.mesh import Mesh, netns_mesh
    from meshcore_tools.chaos.nodes import wrapper_nodes

    api = None if a.api == "none" else a.api
    proto = None if a.route_proto == "any" else a.route_proto
    prom = None if a.prometheus in (None, "none") else a.prometheus
    if a.netns_tag:
        state = json.loads(Path(a.state).read_text())
        mesh = netns_mesh(state, lambda n: f"{a.netns_tag}-{n}", Path(a.journal_root), api=api,
                          route_proto=proto, prometheus=prom)
        return mesh, Options()
    if a.inventory:
        inv = json.loads(subprocess.run(["ansible-inventory", "-i", a.inventory, "--list"],
                                        capture_output=True, text=True, check=True).stdout)
        state = yaml.safe_load(Path(a.topology).read_text())
        ssh = fleet_ssh(inv)
        return (Mesh(state, ssh, wrapper_nodes(ssh), api=api, route_proto=proto,
                     prometheus=prom),
                Options(agent_match=UNIT_AGENT_MATCH))
    from meshcore_tools.lab import prometheus
    from meshcore_tools.lab import state as lab

    st = lab.load_state()
    if a.prometheus is None and "monitor" in st:
        prom = prometheus.url_of(st)  # the lab monitor's, with the project's alert rules

    def podman(node: str) -> list[str]:
        return ["podman", "exec", "-i", lab.container(node)]

    def inside(node: str) -> list[str]:
        return ["nsenter", f"--net={netns.NETNS_DIR / lab.ns(node)}"]

    # systemd (Restart=always) brings a SIGKILLed agent back: no restart argv.
    return (Mesh(st, inside, wrapper_nodes(podman), api=api, route_proto=proto,
                 prometheus=prom),
            Options(agent_match=UNIT_AGENT_MATCH))


def cmd_run(a: argparse.Namespace) -> int:
    from meshcore_tools.chaos import experiment, journal, report
    from meshcore_tools.chaos.runner import Runner
    from meshcore_tools.interrupts import interrupts

    mesh, opts = _targets(a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    journals = []
    rc = 0
    # An alert that became active once the suite began was raised by its faults (Runner).
    began = time.time()
    # SIGINT/SIGTERM are the runs' own until the journals and the report are written: a run
    # stops and rolls back at the first; between runs and after, a signal is only counted
    # (the next run is then recorded as interrupted, and no further one starts).
    with interrupts() as intr:
        if intr is not None:
            intr.armed = False
        try:
            for path in a.experiments:
                exp = experiment.load(Path(path))
                name = Path(path).stem.replace("_", "-")[:24] + time.strftime("-%H%M%S")
                log(f"{path}: {exp['title']}")
                doc = Runner(exp, mesh, opts, name=name, log=log, dry_run=a.dry_run,
                             alerts_since=began).run().journal
                journal.check(doc)
                (out / f"{Path(path).stem}.journal.json").write_text(json.dumps(doc, indent=1))
                journals.append(doc)
                log(f"{path}: status {doc['status']}, deviated {doc['deviated']}")
                if doc["status"] != "completed" or doc["deviated"]:
                    rc = 1
                if doc["status"] == "interrupted":
                    break
        finally:
            mesh.close()
        (out / "report.md").write_text(report.table(journals) + "\n")
        report.plots(journals, out)
        print((out / "report.md").read_text())
    return rc


def cmd_nodes(a: argparse.Namespace) -> int:
    from meshcore_tools.chaos.nodes import leftovers, rollback

    mesh, _ = _targets(a)
    mesh.close()
    names = list(mesh.state["nodes"])
    if a.cmd == "rollback":
        res = rollback(mesh.nodes, names)
        for node, r in res.items():
            print(json.dumps({"node": node, **r.data}))
        return 0 if all(r.rc == 0 for r in res.values()) else 1
    left = leftovers(mesh.nodes, names)
    print(json.dumps({"leftovers": left, "nodes": len(names)}))
    return 0 if not left else 1


def cmd_report(a: argparse.Namespace) -> int:
    from meshcore_tools.chaos import report

    journals = [report.recompute(json.loads(Path(p).read_text())) for p in a.journals]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report.table(journals) + "\n")
    report.plots(journals, out)
    print((out / "report.md").read_text())
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    from meshcore_tools.chaos import journal

    for p in a.journals:
        journal.check(json.loads(Path(p).read_text()))
        print(f"{p}: valid")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="meshcore_tools.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def targets(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--lab", action="store_true", help="the container lab (default)")
        sp.add_argument("--netns-tag")
        sp.add_argument("--state", help="a netns lab's normalised topology (JSON)")
        sp.add_argument("--journal-root", default="build/chaos/journal")
        sp.add_argument("--inventory")
        sp.add_argument("--topology")
        sp.add_argument("--api", default="http://127.0.0.1:9105",
                        help="the agents' API as seen on each node; none: no agent API")
        sp.add_argument("--route-proto", default="77",
                        help="the routes that count (the agent's protocol 77; babel; any)")
        sp.add_argument("--prometheus",
                        help="base URL of the Prometheus whose alerts the steady state reads "
                             "(default: the lab monitor's with --lab, else none; none: skip)")

    r = sub.add_parser("run", help="run experiments")
    r.add_argument("experiments", nargs="+")
    r.add_argument("--out", default="build/chaos")
    r.add_argument("--dry-run", action="store_true",
                   help="check the steady state and print the schedule; inject nothing")
    targets(r)
    for name in ("rollback", "leftovers"):
        targets(sub.add_parser(name))
    rep = sub.add_parser("report")
    rep.add_argument("journals", nargs="+")
    rep.add_argument("--out", default="build/chaos")
    chk = sub.add_parser("check-journal")
    chk.add_argument("journals", nargs="+")
    ds = sub.add_parser("dataset", help="record a labelled dataset on a netns lab")
    ds.add_argument("--topology", action="append",
                    help="rgg:16, grid:9, community, or a topology file (repeatable)")
    ds.add_argument("--seed", type=int, default=1)
    ds.add_argument("--out", default="build/dataset")
    ds.add_argument("--hold", type=float, default=8.0)
    ds.add_argument("--quiet", type=float, default=15.0)
    s = sub.add_parser("stress", help="random faults in a loop on a netns lab")
    s.add_argument("--state", type=Path, required=True, help="the lab's normalised topology")
    s.add_argument("--netns-tag", required=True, help="namespaces are <tag>-<node>")
    s.add_argument("--journal-root", type=Path, required=True)
    s.add_argument("--count", type=int, default=100)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--restart-argv", default="[]", help="JSON argv that restarts a crashed agent")
    s.add_argument("--restart-log")
    a = p.parse_args(argv)
    if a.cmd == "run":
        return cmd_run(a)
    if a.cmd in ("rollback", "leftovers"):
        return cmd_nodes(a)
    if a.cmd == "report":
        return cmd_report(a)
    if a.cmd == "check-journal":
        return cmd_check(a)
    if a.cmd == "dataset":
        from meshcore_tools.chaos import record

        for spec in a.topology or ["rgg:16", "grid:9", "community"]:
            record.record(spec, a.seed, Path(a.out), hold=a.hold, quiet_s=a.quiet)
        return 0
    from meshcore_tools.chaos import stress

    stress.run(a.state, a.netns_tag, a.journal_root, a.count, a.seed,
               json.loads(a.restart_argv), a.restart_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
