"""``labctl status``: neighbours, services, scrapes and reachability of every lab node.

Prints the status table (and the reachability matrix) and writes
build/lab/status.json; exits 1 when any check fails. ``--wait S`` polls until
the lab is healthy or S seconds have passed.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import sys
import time
from pathlib import Path
from typing import Any

from meshcore_tools import ROOT
from meshcore_tools.lab import monitor, prometheus
from meshcore_tools.lab.plan import pick_gateways
from meshcore_tools.lab.state import MONITOR, STATE_DIR, load_state, ns, pids_of, sh


def ping(name: str, addr: str, source: str | None = None) -> bool:
    src = ["-I", source] if source else []
    return sh("ip", "netns", "exec", ns(name), "ping", "-n", "-q", "-c", "1", "-W", "1", *src,
              addr, check=False).returncode == 0


def reachable_from(name: str, source: str, addrs: list[str]) -> set[str]:
    """Which of *addrs* answer one echo from *source* (fping: all in parallel, one process)."""
    out = sh("ip", "netns", "exec", ns(name), "fping", "-q", "-a", "-r", "1", "-t", "500",
             "-S", source, *addrs, check=False).stdout
    return set(out.split())


def unit_states(pid: int | None, units: list[str]) -> dict[str, str]:
    # nsenter (as the lab's Ansible connection), not `podman exec`: no podman lock,
    # ~10 ms instead of seconds per call on a busy 50-node lab.
    if pid is None:
        return {}
    res = sh("nsenter", "-t", str(pid), "-m", "-p", "-u", "-i", "systemctl", "show",
             "-p", "Id,ActiveState", "--value", *units, check=False)
    values = [v for v in res.stdout.split("\n") if v]
    return {values[i]: values[i + 1] for i in range(0, len(values) - 1, 2)}


def mgmt_diagnosis(state: dict[str, Any]) -> str:
    """Why the host may not reach the management network: backend, route, bridge address."""
    backend = sh("podman", "info", "--format", "{{.Host.NetworkBackend}}",
                 check=False).stdout.strip() or "unknown"
    address = state["monitor"]["mgmt_address"]
    route = sh("ip", "-o", "route", "get", address, check=False)
    via = route.stdout.split()
    dev = via[via.index("dev") + 1] if "dev" in via else None
    parts = [f"podman network backend: {backend}"]
    if dev is None:
        parts.append(f"the host has no route to {address}")
    else:
        addrs = sh("ip", "-o", "-4", "addr", "show", "dev", dev, check=False).stdout.split()
        own = [addrs[i + 1] for i, w in enumerate(addrs) if w == "inet"]
        parts.append(f"{address} routes via {dev} ({', '.join(own) or 'no IPv4 address'})")
    if backend != "netavark":
        parts.append("the lab needs netavark (run `make setup`; scripts/containers.conf pins it)")
    return "; ".join(parts)


NODE_UNITS = ["prometheus-node-exporter.service", "mesh-agent.service"]
GATEWAY_UNITS = ["etcd.service"]  # the gateways' etcd members (the loop's leases)
MONITOR_UNITS = ["prometheus.service", "prometheus-node-exporter.service",
                 "prometheus-alertmanager.service", "meshcore-alert-sink.service"]


def collect(state: dict[str, Any]) -> dict[str, Any]:
    nodes = state["nodes"]
    with cf.ThreadPoolExecutor(max_workers=16) as pool:
        pings = {
            (name, end["ifname"]): pool.submit(ping, name, end["peer_address"])
            for name, n in nodes.items() for end in n["links"]
        }
        pids = pids_of([*nodes, MONITOR])
        gateways = set(pick_gateways(state))
        units = {name: pool.submit(unit_states, pids.get(name),
                                   NODE_UNITS + (GATEWAY_UNITS if name in gateways else []))
                 for name in nodes}
        units[MONITOR] = pool.submit(unit_states, pids.get(MONITOR), MONITOR_UNITS)
        targets, prom_error = prometheus.targets(state["monitor"]["mgmt_address"])
        agents = all(u.result().get("mesh-agent.service") == "active"
                     for n, u in units.items() if n != MONITOR)
        # Multi-hop reachability over the agents' routes: node address to node address.
        by_addr = {n["node_address"]: name for name, n in nodes.items()}
        reach = {
            a: pool.submit(reachable_from, a, nodes[a]["node_address"],
                           [nodes[b]["node_address"] for b in nodes if b != a])
            for a in nodes
        } if agents else {}
        rows = []
        for name, n in nodes.items():
            ok = sum(pings[(name, e["ifname"])].result() for e in n["links"])
            svc = units[name].result()
            rows.append({
                "node": name,
                "interfaces": [e["ifname"] for e in n["links"]],
                "neighbours": [e["peer"] for e in n["links"]],
                "neighbours_pingable": ok,
                "neighbours_total": len(n["links"]),
                "services": {k.removesuffix(".service"): v for k, v in svc.items()
                             if v != "inactive" or "mesh-agent" not in k},
                "scrape": targets.get(name, {}),
                "scrape_error": prom_error,
                **({"reachable": sorted(by_addr[x] for x in reach[name].result()
                                        if x in by_addr)}
                   if reach else {}),
            })
        rows.append({
            "node": MONITOR, "interfaces": [], "neighbours": [], "neighbours_pingable": 0,
            "neighbours_total": 0,
            "services": {k.removesuffix(".service"): v for k, v in units[MONITOR].result().items()},
            "scrape": targets.get(MONITOR, {}),
            "scrape_error": prom_error,
        })
    return {"topology": state["name"], "nodes": rows, "agents": agents,
            "prometheus": {"url": prometheus.url_of(state), "error": prom_error}}


def problems(row: dict[str, Any], mesh_size: int = 0) -> list[str]:
    """Each failed check of one status row, in words an operator can act on."""
    out = []
    if row["neighbours_pingable"] != row["neighbours_total"]:
        out.append(f"{row['neighbours_total'] - row['neighbours_pingable']} of "
                   f"{row['neighbours_total']} veth neighbours do not answer a ping")
    if "reachable" in row and len(row["reachable"]) < mesh_size - 1:
        out.append(f"reaches {len(row['reachable'])}/{mesh_size - 1} node addresses "
                   "over agent routes")
    for unit, st in sorted(row["services"].items()):
        if st != "active":
            out.append(f"service {unit} is {st}")
    if not row["scrape"]:
        out.append("not scraped: " + ("Prometheus is unreachable" if row.get("scrape_error")
                                      else "Prometheus has no target for it"))
    for job, health in sorted(row["scrape"].items()):
        if health != "up":
            out.append(f"scrape {job} is {health}")
    return out


def healthy(row: dict[str, Any], mesh_size: int = 0) -> bool:
    return not problems(row, mesh_size)


def all_healthy(report: dict[str, Any]) -> bool:
    size = len(report["nodes"]) - 1
    return all(healthy(r, size) for r in report["nodes"])


def print_matrix(report: dict[str, Any]) -> None:
    rows = [r for r in report["nodes"] if "reachable" in r]
    if not rows:
        return
    names = [r["node"] for r in rows]
    total = len(names) * (len(names) - 1)
    ok = sum(len(r["reachable"]) for r in rows)
    print(f"\nreachability over agent routes (node address to node address): {ok}/{total} pairs")
    if len(names) <= 30:
        w = max(len(n) for n in names)
        print(" " * (w + 2) + " ".join(f"{i % 100:>2}" for i in range(1, len(names) + 1)))
        for i, r in enumerate(rows, 1):
            reach = set(r["reachable"])
            cells = " ".join(" -" if n == r["node"] else (" ." if n in reach else " X")
                             for n in names)
            print(f"{r['node']:<{w}}  {cells}   {i}")
        print("(. reachable, X not reachable; columns numbered as the rows)")
    else:
        for r in rows:
            missing = sorted(set(names) - set(r["reachable"]) - {r["node"]})
            if missing:
                print(f"  {r['node']} cannot reach {len(missing)}: {', '.join(missing[:10])}")


def print_table(report: dict[str, Any]) -> None:
    size = len(report["nodes"]) - 1
    rows = report["nodes"]
    w = max(len(r["node"]) for r in rows)
    print(f"\nlab {report['topology']}: {len(rows) - 1} mesh nodes + monitor")
    print(f"{'node':<{w}}  {'mesh ifaces':<11}  {'neighbours ok':<13}  {'services':<38}  scrape")
    for r in rows:
        svc = " ".join(
            f"{k}={'up' if v == 'active' else v}" for k, v in sorted(r["services"].items())
        )
        scrape = " ".join(f"{k}={v}" for k, v in sorted(r["scrape"].items())) or "-"
        nb = f"{r['neighbours_pingable']}/{r['neighbours_total']}"
        flag = "" if healthy(r, size) else "   <-- NOT OK"
        print(f"{r['node']:<{w}}  {len(r['interfaces']):<11}  {nb:<13}  {svc:<38}  {scrape}{flag}")
    bad = [r["node"] for r in rows if not healthy(r, size)]
    total_nb = sum(r["neighbours_total"] for r in rows)
    ok_nb = sum(r["neighbours_pingable"] for r in rows)
    print(f"\nveth neighbours pingable: {ok_nb}/{total_nb}; nodes healthy: "
          f"{len(rows) - len(bad)}/{len(rows)}" + (f"; not OK: {', '.join(bad)}" if bad else ""))
    prom = report.get("prometheus", {})
    if prom.get("error"):
        print(f"\nPrometheus at {prom['url']} is not reachable from this host: {prom['error']}"
              f"\n  {prom.get('diagnosis', '')}")
    for r in rows:
        for p in problems(r, size):
            print(f"  {r['node']}: {p}")


def cmd_status(args: argparse.Namespace) -> None:
    state = load_state()
    deadline = time.monotonic() + args.wait
    said = 0.0
    while True:
        report = collect(state)
        if all_healthy(report) or time.monotonic() >= deadline:
            break
        if time.monotonic() - said >= 10:  # progress, not a line per poll
            said = time.monotonic()
            size = len(report["nodes"]) - 1
            ok = sum(healthy(r, size) for r in report["nodes"])
            failing = sorted({p for r in report["nodes"] for p in problems(r, size)})
            print(f"labctl: waiting for the lab: {ok}/{size + 1} nodes healthy "
                  f"({deadline - time.monotonic():.0f} s left); failing: "
                  f"{'; '.join(failing[:3])}{' ...' if len(failing) > 3 else ''}",
                  file=sys.stderr, flush=True)
        time.sleep(2)
    if report["prometheus"]["error"]:
        report["prometheus"]["diagnosis"] = mgmt_diagnosis(state)
    print_table(report)
    print_matrix(report)
    print("\n" + monitor.describe(monitor.services(state)))
    out = Path(args.json) if args.json else STATE_DIR / "status.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"status report: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    if not all_healthy(report):
        raise SystemExit(1)
