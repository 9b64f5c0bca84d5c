"""``meshctl lease check``: can this node take a lease for a disruptive action now?

The self-healing loop's disruptive actions (restarting a unit, and later isolating an
origin) run only under a lease from etcd on the gateways (docs/mapek.md, "Leases").
This command takes one the way the agent would, with the same provider
(:func:`mesh_agent.mapek.shell.lease_provider`: the endpoints, TTL, cap and TLS files
of the agent's config, and the fleet and 2-hop neighbourhood of the running agent's
link-state database from its API), then checks it is still held and hands it back.
Run it on a node before turning ``mapek.mode`` to ``enforce``: a refusal says why
(``no_quorum`` with each endpoint's error, ``fleet_cap``, ``neighbourhood`` naming
the holder, ``contention``).

It is a real lease, of this node, under its own name: while it is held the rules
apply to it as to any other (``--hold`` keeps it a while, to try them from a
neighbour; ``--keep`` never hands it back, so it ends with its TTL as a dead
holder's would). ``--wait`` tries again until granted, and says how long it waited.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import networkx as nx

from mesh_agent.config import ConfigError, load_config
from mesh_agent.ctl.client import AgentUnreachable, ApiError, HttpClient, local_api_url
from mesh_agent.mapek.lease import Refusal, fleet_cap, neighbourhood
from mesh_agent.mapek.safety import Lease, LeaseProvider

OK, BAD, USAGE = 0, 1, 2
ACTION = "lease_check"  # the action name etcd's log and the agent's logger see
RETRY_S = 0.5


def add_parser(sub: Any) -> None:
    lp = sub.add_parser("lease", help="the self-healing loop's leases (etcd on the gateways)")
    ls = lp.add_subparsers(dest="lease_command", required=True)
    c = ls.add_parser("check", help="take a lease as the agent would, check it, hand it back",
                      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--hold", type=float, default=0.0, metavar="SECONDS",
                   help="hold the lease this long before checking it and handing it back")
    c.add_argument("--keep", action="store_true",
                   help="never hand it back: it ends with its TTL, as a dead holder's would")
    c.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="while refused, try again for up to this long")


def graph_of(topology: dict[str, Any]) -> nx.Graph:
    """The agent's ``/v1/topology`` answer as a graph (nodes and the links both ends
    advertise, as the LSDB's own graph)."""
    g = nx.Graph()
    g.add_nodes_from(str(n["name"]) for n in topology.get("nodes", []))
    g.add_edges_from((str(e["a"]), str(e["b"])) for e in topology.get("edges", []))
    return g


def check(provider: LeaseProvider, node: str, graph: nx.Graph, *, ttl_s: float, cap_pct: float,
          hold_s: float = 0.0, keep: bool = False, wait_s: float = 0.0,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Acquire (again every :data:`RETRY_S` while refused, up to ``wait_s``), hold,
    validate, release: what happened, as a dict for the report."""
    fleet, hood = neighbourhood(graph, node)
    report: dict[str, Any] = {
        "node": node, "provider": provider.name, "fleet": fleet,
        "cap": fleet_cap(fleet, cap_pct), "neighbourhood": sorted(hood), "ttl_s": ttl_s,
    }
    start = clock()
    attempts = 0
    while True:
        attempts += 1
        t0 = clock()
        got = provider.acquire(node, ACTION, ttl_s, t0)
        report["acquire_ms"] = round((clock() - t0) * 1000, 1)
        if isinstance(got, Lease) or clock() - start + RETRY_S > wait_s:
            break
        sleep(RETRY_S)
    report.update(attempts=attempts, waited_s=round(clock() - start, 3))
    if isinstance(got, Refusal):
        report.update(granted=False, refusal={"reason": got.reason, "detail": got.detail})
        return report
    report.update(granted=True, token=got.token, lease_id=got.lease_id, refusal=None)
    if hold_s > 0:
        sleep(hold_s)
    report["held_after_s"] = round(clock() - t0, 3)
    report["still_held"] = provider.validate(got, clock())
    report["released"] = not keep
    if not keep:
        provider.release(got)
    return report


def render(r: dict[str, Any]) -> str:
    where = (f"fleet of {r['fleet']}, cap {r['cap']}, "
             f"{len(r['neighbourhood'])} nodes within 2 hops")
    waited = f" after {r['waited_s']} s ({r['attempts']} tries)" if r["attempts"] > 1 else ""
    if not r["granted"]:
        ref = r["refusal"]
        return (f"{r['node']}: refused ({ref['reason']}){waited}: {ref['detail']}\n"
                f"  {r['provider']}, {where}")
    end = "handed back" if r["released"] else f"kept: it ends with its TTL ({r['ttl_s']:g} s)"
    held = "still held" if r["still_held"] else "NOT held any more"
    return (f"{r['node']}: granted{waited}, fencing token {r['token']}, "
            f"in {r['acquire_ms']} ms; {held} after {r['held_after_s']} s; {end}\n"
            f"  {r['provider']}, {where}")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    # Imported here: the provider module pulls in the loop's shell (asyncio, the cores).
    from mesh_agent.mapek.shell import lease_provider

    try:
        cfg = load_config(Path(args.config))
    except ConfigError as exc:
        print(f"meshctl: {exc}", file=err)
        return USAGE
    if not cfg.mapek.lease.endpoints:
        print("meshctl: no lease service configured (mapek.lease.endpoints is empty: the "
              "site has no gateways group, or its config predates it), so the loop "
              "runs local actions only", file=err)
        return BAD
    try:
        topology = HttpClient(args.api or local_api_url(Path(args.config)),
                              timeout=args.timeout).get("/v1/topology")[1]
    except (AgentUnreachable, ApiError) as exc:
        print(f"meshctl: the neighbourhood comes from the running agent: {exc}", file=err)
        return BAD
    g = graph_of(topology)
    provider = lease_provider(cfg, lambda: g)
    lease = cfg.mapek.lease
    report = check(provider, cfg.node_name, g, ttl_s=lease.ttl_s, cap_pct=lease.cap_pct,
                   hold_s=args.hold, keep=args.keep, wait_s=args.wait)
    report["endpoints"] = list(lease.endpoints)
    print(json.dumps(report, sort_keys=True) if args.json else render(report), file=out)
    return OK if report["granted"] and report["still_held"] else BAD
