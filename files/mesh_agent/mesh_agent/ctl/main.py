"""meshctl: ask a mesh node's agent what it sees (neighbours, routes, identity, events,
incidents).

Exit codes: 0 the answer is good; 1 the answer is bad (not ready, no path, an
expected neighbour missing, an unhealthy node in the fleet); 2 usage; 3 the
agent could not be reached or answered an error.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import mesh_agent
from mesh_agent.config import DEFAULT_CONFIG_PATH
from mesh_agent.ctl import fleet as fleet_mod
from mesh_agent.ctl import lease as lease_mod
from mesh_agent.ctl import maintenance as maintenance_mod
from mesh_agent.ctl import release as release_mod
from mesh_agent.ctl.client import (
    AgentUnreachable,
    ApiError,
    HttpClient,
    local_api_url,
    node_api_url,
)
from mesh_agent.ctl.render import (
    compact,
    duration,
    parse_duration,
    table,
    timestamp,
    yes_no,
)
from mesh_agent.ctl.status import problems, summarise

OK, BAD, USAGE, UNREACHABLE = 0, 1, 2, 3
API_PORT = 9105
PAGE = 1000  # the API's largest page of events
FOLLOW_POLL_S = 1.0
SSH_DEFAULT = "ssh -o BatchMode=yes -o ConnectTimeout=5"

EXAMPLES = """\
examples:
  meshctl status                     one screen: ready, neighbours, routes, identity, last events
  meshctl neighbours --expect n2,n3  exit 1 if n2 or n3 is not an up neighbour
  meshctl routes n7                  primary and backup path to n7, loop-free, protection
  meshctl events --since 1h          what happened in the last hour (link down, failover, ...)
  meshctl events --follow            new events as they happen (Ctrl-C stops)
  meshctl incidents --open           what the self-healing loop is handling now
  meshctl --node 10.20.0.11 identity      a node's certificate, over its management address
  meshctl --node rpi-01 --ssh routes      through ssh, for an API bound to loopback only
  meshctl --json routes | jq .            every command has a --json form for scripts
  meshctl fleet status -i inventories/mine   one row per node of an Ansible inventory;
                                         exit 1 names nodes missing a neighbour its links expect
  meshctl release list                    installed agent releases; release use ID switches back
  meshctl lease check                     can this node take a lease from the gateways' etcd?
  meshctl maintenance start --for 30m     the loop records incidents, does not act, for 30 min
"""


# -- one function per command: (client, args) -> (data, exit code) ------------------------
Fetch = Callable[[HttpClient, argparse.Namespace], tuple[Any, int]]


def fetch_neighbours(c: HttpClient, args: argparse.Namespace) -> tuple[Any, int]:
    _, data = c.get("/v1/neighbors")
    expected = [n for n in (args.expect or "").split(",") if n]
    up = {n["name"] for n in data["neighbors"] if n["state"] == "up"}
    data["expected_missing"] = sorted(set(expected) - up)
    return data, BAD if data["expected_missing"] else OK


def render_neighbours(data: dict[str, Any]) -> str:
    rows = [
        [n["name"], n["interface"], n["link_address"], n["node_address"], n["state"],
         "-" if n["rtt_seconds"] is None else duration(n["rtt_seconds"]),
         f"{n['loss'] * 100:.0f}%", n["cost"], n.get("echo_mode", "-"),
         "-" if n.get("dead_after_seconds") is None else duration(n["dead_after_seconds"]),
         duration(n["age_seconds"])]
        for n in data["neighbors"]
    ]
    out = table(["NEIGHBOUR", "INTERFACE", "LINK ADDRESS", "NODE ADDRESS", "STATE", "RTT",
                 "LOSS", "COST", "ECHO", "DEAD AFTER", "LINK AGE"], rows) \
        if rows else "no neighbours"
    if data.get("expected_missing"):
        out += "\nmissing (expected): " + ", ".join(data["expected_missing"])
    return out


def fetch_routes(c: HttpClient, args: argparse.Namespace) -> tuple[Any, int]:
    if args.dst:
        status, data = c.get(f"/v1/paths/{args.dst}", ok=(200, 404))
        if status == 404:
            return {"destination": args.dst, "error": f"no path to {args.dst}"}, BAD
        return data, OK
    _, data = c.get("/v1/paths")
    return data, OK


def _path(nodes: list[str] | None) -> str:
    return " -> ".join(str(n) for n in nodes) if nodes else "none"


def render_routes(data: dict[str, Any]) -> str:
    if "error" in data:
        return str(data["error"])
    if "destination" in data:
        route = data.get("route")
        lines = [
            ("destination", data["destination"]),
            ("primary", f"{_path(data['primary'])}  (next hop {data['primary_next_hop']}, "
                        f"cost {data['cost']})"),
            ("backup", f"{_path(data['backup'])}  (next hop {data['backup_next_hop'] or '-'}, "
                       f"loop-free {yes_no(data['backup_loop_free'])}, node-protecting "
                       f"{yes_no(data['backup_node_protecting'])}, rule "
                       f"{data.get('backup_rule') or '-'})"),
            ("disjoint", "; ".join(_path(p) for p in data["disjoint"]) or "none"),
            ("protected", ", ".join(f"{p['a']}-{p['b']} {yes_no(p['protected'])}"
                                    for p in data["protected_links"]) or "-"),
            ("kernel", "not installed" if not route else
             f"{route['address']} via {route['active_next_hop']} (group {route['group_id']})"),
        ]
        return "\n".join(f"{k:<12} {v}" for k, v in lines)
    dests = data["destinations"]
    mode = data["mode"]
    head = (f"{data['node']}: {len(dests)} destinations, mode {mode} ("
            + ("routes are programmed in the kernel" if mode == "enforce" else
               "routes are computed, not programmed") + ")")
    rows = [
        [dst, d["primary_next_hop"], d["backup_next_hop"], yes_no(d["backup_loop_free"]),
         yes_no(d["backup_node_protecting"]), d["cost"], yes_no(d["installed"])]
        for dst, d in sorted(dests.items())
    ]
    body = table(["DESTINATION", "PRIMARY", "BACKUP", "LOOP-FREE", "NODE-PROTECTING", "COST",
                  "INSTALLED"], rows) if rows else "no destinations"
    return f"{head}\n{body}"


def fetch_topology(c: HttpClient, args: argparse.Namespace) -> tuple[Any, int]:
    return c.get("/v1/topology")[1], OK


def render_topology(data: dict[str, Any]) -> str:
    lsdb = data["lsdb"]
    nodes = [[n["name"], n["address"], lsdb.get(n["name"], {}).get("seq"),
              duration(lsdb[n["name"]]["age_seconds"]) if n["name"] in lsdb else "-"]
             for n in data["nodes"]]
    links = [[e["a"], e["b"], e["cost"]] for e in data["edges"]]
    return (f"{data['node']}: {len(nodes)} nodes, {len(links)} links\n"
            + table(["NODE", "ADDRESS", "ADVERT SEQ", "ADVERT AGE"], nodes) + "\n\n"
            + table(["A", "B", "COST"], links))


def fetch_plan(c: HttpClient, args: argparse.Namespace) -> tuple[Any, int]:
    return c.get("/v1/plan", [("max_links", args.max_links)])[1], OK


def render_plan(data: dict[str, Any]) -> str:
    s = data["summary"]
    head = (f"{data['node']}: {s['nodes']:.0f} nodes, {s['links']:.0f} links, "
            f"{s['pairs_two_edge_connected'] * 100:.0f}% of node pairs joined by two "
            f"edge-disjoint paths, {s['bridges']:.0f} bridges")
    rows = [[x["u"], x["v"], x["cost"], x["pairs_protected"]] for x in data["links"]]
    if rows:
        body = table(["ADD LINK", "TO", "COST", "PAIRS PROTECTED"], rows)
    elif s["pairs_two_edge_connected"] >= 1.0:
        body = "no link to add: every pair has two edge-disjoint paths"
    else:
        body = "no new link proposed"
    return f"{head}\n{body}"


def fetch_identity(c: HttpClient, args: argparse.Namespace) -> tuple[Any, int]:
    return c.get("/v1/identity")[1], OK


def _cert_line(cert: dict[str, Any], now: float) -> str:
    left = cert["not_after"] - now
    when = f"expired {duration(-left)} ago" if left <= 0 else f"expires in {duration(left)}"
    until = timestamp(cert["not_after"])
    return f"{cert['subject']}, serial {cert['serial']}, {when} ({until} UTC)"


def render_identity(data: dict[str, Any]) -> str:
    now = time.time()
    lines = [
        ("spiffe id", data["spiffe_id"]),
        ("certificate", _cert_line(data["certificate"], now)),
        ("source", data["source"] + (", following rotations" if data["following_rotations"]
                                     else "")),
        ("rotations", f"{data['rotations']} ({data['reload_errors']} rejected)"),
        ("clock", "trusted, validity windows checked" if data["validity_checked"] else
         "not trusted yet: validity windows not checked"),
    ]
    lines += [("trust bundle" if i == 0 else "", _cert_line(c, now))
              for i, c in enumerate(data["bundle"])]
    return "\n".join(f"{k:<13} {v}" for k, v in lines)


def fetch_status(c: HttpClient, args: argparse.Namespace) -> tuple[Any, int]:
    return status_of(c)


def status_of(c: HttpClient) -> tuple[dict[str, Any], int]:
    agent, ready, neighbors, paths, identity = (
        c.get(p, ok=(200, 503))[1]
        for p in ("/v1/agent", "/readyz", "/v1/neighbors", "/v1/paths", "/v1/identity"))
    events = c.get("/v1/events", [("limit", 5)])[1]
    s = summarise(agent, ready, neighbors, paths, identity, events, now=time.time())
    return s, OK if s["ready"] else BAD


def render_status(s: dict[str, Any]) -> str:
    checks = " ".join(f"{k} {'ok' if v else 'FAIL'}" for k, v in sorted(s["checks"].items()))
    dests = s["destinations"]
    lf = s["last_failover"]
    lines = [
        f"{'*' if s['ready'] else 'x'} {s['node']} ({s['address']}) - mesh-agent {s['version']}, "
        f"mode {s['mode']}, {s['link_backend']} links"
        + (" with echo probes" if s["echo"] and s["link_backend"] == "native" else ""),
        f"  Ready:       {yes_no(s['ready'])} ({checks})",
        f"  Neighbours:  {len(s['neighbors_up'])} up"
        + (f" ({', '.join(s['neighbors_up'])})" if s["neighbors_up"] else "")
        + (f"; not up: {', '.join(s['neighbors_other'])}" if s["neighbors_other"] else ""),
        f"  Routes:      {dests} destinations, {s['with_backup']} with a backup, "
        f"{s['loop_free_backup']} loop-free, {s['installed']} installed",
        f"  Identity:    {s['spiffe_id']} ({s['identity_source']}), certificate expires in "
        f"{duration(s['cert_seconds_left'])}",
        "  Failover:    " + ("none since start" if not lf else
                             f"{lf.get('neighbor', lf.get('subject', '?'))} in "
                             f"{duration(float(lf['duration_seconds']))}"),
    ]
    found = problems(s)
    if found:
        lines.append(f"  Problems:    {'; '.join(found)}")
    if s["recent_events"]:
        lines.append("")
        lines += [event_line(e) for e in s["recent_events"]]
    return "\n".join(lines)


def event_line(e: dict[str, Any]) -> str:
    return (f"{timestamp(e['wall'])}  {e['kind']:<17} {e['subject'] or '-':<14} "
            f"{e['reason'] or '-':<12} {compact(e['detail'])}").rstrip()


def events_of(c: HttpClient, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """The events asked for, oldest first; with --follow, then every new one until Ctrl-C."""
    filters: list[tuple[str, Any]] = [("kind", k) for k in args.kind or []]
    if args.subject:
        filters.append(("subject", args.subject))
    if args.since is not None:
        after, since = 0, [("since", max(0.0, time.time() - args.since))]
        while True:
            _, page = c.get("/v1/events", [("after", after), ("limit", PAGE), *since, *filters])
            yield from page["events"]
            after = page["next"]
            if len(page["events"]) < PAGE:
                break
    else:
        _, page = c.get("/v1/events", [("limit", args.limit), *filters])
        yield from page["events"]
        after = page["next"]
    while args.follow:
        time.sleep(FOLLOW_POLL_S)
        _, page = c.get("/v1/events", [("after", after), ("limit", PAGE), *filters])
        if page["gap"]:
            print(f"meshctl: events after {after} were pruned before they were read",
                  file=sys.stderr)
        if page["newest_id"] < after:
            print("meshctl: the agent's event log was reset; reading it from its start",
                  file=sys.stderr)
            after = 0
            continue
        yield from page["events"]
        after = page["next"]


def fetch_incidents(c: HttpClient, args: argparse.Namespace) -> tuple[Any, int]:
    params: list[tuple[str, Any]] = [("limit", args.limit)]
    if args.open:
        params.append(("open", "true"))
    return c.get("/v1/incidents", params)[1], OK


def render_incidents(data: dict[str, Any]) -> str:
    """One row per incident: signal -> incident -> action -> outcome, the MTTR, and for a
    link incident how long until our traffic left the link (MITIGATED)."""
    if not data["enabled"]:
        return f"{data['node']}: the self-healing loop is off (mapek.enabled: false)"
    head = (f"{data['node']}: mapek {data['mode']}, policy {data['policy']}, "
            f"{len(data['active_actions'])} action(s) in force, knowledge {data['knowledge']}")
    if w := data.get("maintenance"):
        head += (f"\nmaintenance window until {timestamp(w['until'])} UTC"
                 f"{': ' + w['reason'] if w['reason'] else ''} (incidents recorded, not acted on)")
    rows = []
    for i in data["incidents"]:
        sig, act = i["signal"], i["action"] or {}
        outcome = act.get("outcome")
        if i.get("cause") is not None:  # a symptom of another incident (mapek.loop)
            outcome = f"{outcome}, cause #{i['cause']}"
        rows.append([i["id"], timestamp(i["detected_wall"]), i["class"], i["target"],
                     f"{sig['name']} {sig['value']:.3g} > {sig['threshold']:.3g}",
                     act.get("kind"), outcome, i["state"],
                     duration(i["mttr_seconds"]) if i["mttr_seconds"] is not None else None,
                     duration(ttm) if (ttm := i.get("time_to_mitigate_seconds")) is not None
                     else None])
    body = table(["ID", "DETECTED (UTC)", "CLASS", "TARGET", "SIGNAL", "ACTION", "OUTCOME",
                  "STATE", "MTTR", "MITIGATED"], rows) if rows else "no incidents"
    if arms := data.get("action_stats"):  # an older agent does not serve them
        body += ("\nlearned: outcomes per class and action (failures include collateral "
                 "charges; RULE: the fixed policy's choice)\n")
        body += table(["CLASS", "ACTION", "TRIES", "SUCCESSES", "FAILURES", "MEAN MTTR",
                       "RULE"],
                      [[a["class"], a["action"], a["tries"], a["successes"], a["failures"],
                        duration(a["mean_mttr_seconds"])
                        if a["mean_mttr_seconds"] is not None else None,
                        "yes" if a["rule"] else ""] for a in arms])
    return f"{head}\n{body}"


# -- output ------------------------------------------------------------------------------
COMMANDS: dict[str, tuple[Fetch, Callable[[Any], str]]] = {
    "neighbours": (fetch_neighbours, render_neighbours),
    "routes": (fetch_routes, render_routes),
    "topology": (fetch_topology, render_topology),
    "plan": (fetch_plan, render_plan),
    "identity": (fetch_identity, render_identity),
    "status": (fetch_status, render_status),
    "incidents": (fetch_incidents, render_incidents),
}


def emit_events(events: Iterator[dict[str, Any]], as_json: bool, out: TextIO) -> int:
    """JSON lines with --json (one event each), else one aligned line each."""
    for e in events:
        print(json.dumps(e, sort_keys=True) if as_json else event_line(e), file=out, flush=True)
    return OK


def run_local(args: argparse.Namespace, out: TextIO) -> int:
    if args.command == "release":
        return release_mod.run(args, out, syslog=True)
    if args.command == "lease":
        return lease_mod.run(args, out, sys.stderr)
    if args.command == "maintenance":
        return maintenance_mod.run(args, out, sys.stderr)
    client = HttpClient(api_url(args), timeout=args.timeout)
    if args.command == "events":
        return emit_events(events_of(client, args), args.json, out)
    if args.command == "fleet":
        return run_fleet(args, out)
    fetch, render = COMMANDS[args.command]
    data, code = fetch(client, args)
    print(json.dumps(data, sort_keys=True) if args.json else render(data), file=out)
    return code


def api_url(args: argparse.Namespace) -> str:
    if args.api:
        return str(args.api)
    if args.node:
        return node_api_url(args.node, args.port)
    return local_api_url(Path(args.config))


def run_fleet(args: argparse.Namespace, out: TextIO) -> int:
    try:
        inventory = fleet_mod.inventory_nodes(args.inventory, args.group)
    except fleet_mod.InventoryError as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return USAGE

    def ask(name: str) -> dict[str, Any] | str:
        address = inventory.addresses[name]
        if args.ssh:
            return status_over_ssh(inventory.ssh.get(name) or [address], args.timeout)
        try:
            return status_of(HttpClient(node_api_url(address, args.port), args.timeout))[0]
        except (AgentUnreachable, ApiError) as exc:
            return str(exc)

    nodes = inventory.addresses
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = dict(zip(nodes, pool.map(ask, nodes), strict=True))
    rows = fleet_mod.fleet_rows(answers, args.cert_warn, inventory.expected)
    summary = fleet_mod.fleet_summary(rows)
    checked = inventory.expected is not None
    if args.json:
        print(json.dumps({"summary": summary, "nodes": rows, "neighbours_checked": checked},
                         sort_keys=True), file=out)
    else:
        print(table(fleet_mod.FLEET_HEADERS, fleet_mod.fleet_table_rows(rows)), file=out)
        print(f"\n{summary['healthy']}/{summary['nodes']} nodes healthy, "
              f"{summary['unreachable']} unreachable", file=out)
        for r in rows:
            if r["expected_missing"]:
                print(f"missing (expected by the inventory): {r['node']} has no "
                      + ", ".join(r["expected_missing"]), file=out)
        if not checked:
            print("expected neighbours: not checked (no mesh_links in the inventory)", file=out)
    return OK if summary["healthy"] == summary["nodes"] else BAD


# -- over ssh: the node's own meshctl answers in JSON, rendered here -----------------------
GLOBAL_WITH_VALUE = {"--api", "--node", "--port", "--config", "--timeout"}


def command_argv(argv: list[str]) -> list[str]:
    """The command and its arguments: *argv* without meshctl's global options."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        flag = argv[i].split("=", 1)[0]
        i += 2 if flag in GLOBAL_WITH_VALUE and "=" not in argv[i] else 1
    return argv[i:]


def status_over_ssh(target: Sequence[str], timeout: float) -> dict[str, Any] | str:
    """``meshctl --json status`` run over ssh on *target* (ssh's arguments, the host
    last): its summary, or why not (one line)."""
    ssh = shlex.split(os.environ.get("MESHCTL_SSH", SSH_DEFAULT))
    host = target[-1]
    try:
        res = subprocess.run([*ssh, *target, "meshctl --json status"], capture_output=True,
                             text=True, timeout=timeout + 10)
    except subprocess.TimeoutExpired:
        return f"ssh {host}: no answer"
    if res.returncode in (OK, BAD) and res.stdout.strip():
        data: dict[str, Any] = json.loads(res.stdout)
        return data
    last = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
    return f"ssh {host}: {last}"


def run_ssh(args: argparse.Namespace, argv: list[str], out: TextIO) -> int:
    ssh = shlex.split(os.environ.get("MESHCTL_SSH", SSH_DEFAULT))
    remote = shlex.join(["meshctl", "--json", *command_argv(argv)])
    with subprocess.Popen([*ssh, args.node, remote], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        if args.command == "events":
            emit_events((json.loads(line) for line in proc.stdout), args.json, out)
            code = proc.wait()
        else:
            text = proc.stdout.read()
            code = proc.wait()
            if code in (OK, BAD) and text.strip():
                data = json.loads(text)
                print(text.strip() if args.json else COMMANDS[args.command][1](data), file=out)
    if code == 255:  # ssh's own failure (its message is on stderr)
        print(f"meshctl: ssh to {args.node} failed", file=sys.stderr)
        return UNREACHABLE
    return code


# -- command line ------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshctl", description=__doc__, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"meshctl {mesh_agent.__version__}")
    p.add_argument("--json", action="store_true", help="output for scripts (events: JSON lines)")
    p.add_argument("--api", default=os.environ.get("MESHCTL_API"),
                   help="the agent's API URL (default: $MESHCTL_API, else the first loopback "
                        "endpoint of api_listen in --config)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG_PATH),
                   help="the agent's config, for its API address (default: %(default)s)")
    p.add_argument("--node", metavar="HOST",
                   help="ask this node on its management address instead of the local agent")
    p.add_argument("--port", type=int, default=API_PORT, help="API port with --node (%(default)s)")
    p.add_argument("--ssh", action="store_true",
                   help="with --node or fleet: run meshctl on the node over ssh ($MESHCTL_SSH, "
                        f"default '{SSH_DEFAULT}'), for an API bound to loopback only")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    n = sub.add_parser(
        "neighbours", aliases=["neighbors"], help="neighbours: RTT, loss, echo mode, link age",
        description="ECHO says how a neighbour's death is detected: echo (its kernel answers "
                    "our echo probes, BFD's echo function), pending (probes sent, none answered "
                    "yet: hellos judge), off (echo probes disabled) or batman (batman-adv "
                    "judges). LINK AGE is the time since it came up.")
    n.add_argument("--expect", metavar="NAME,...", help="exit 1 unless these neighbours are up")
    r = sub.add_parser("routes", help="primary and backup next hop per destination")
    r.add_argument("dst", nargs="?", help="one destination: both paths as lists of nodes")
    sub.add_parser("topology", help="the mesh as this node's link-state database sees it")
    pl = sub.add_parser("plan", help="links that would give every node pair a backup path")
    pl.add_argument("--max-links", type=int, default=10)
    sub.add_parser("identity", help="SPIFFE ID, certificate expiry, trust bundle, source")
    e = sub.add_parser("events", help="what happened: links, failovers, rejected adverts...",
                       description="The node's event log, oldest first; times are UTC on the "
                                   "node's clock.")
    e.add_argument("--since", type=parse_duration, metavar="DURATION",
                   help="events of the last DURATION (90, 30s, 15m, 1h, 2d), oldest first")
    e.add_argument("--follow", "-f", action="store_true", help="then wait for new ones")
    e.add_argument("--kind", action="append", help="only this kind (repeatable)")
    e.add_argument("--subject", help="only events about this neighbour or origin")
    e.add_argument("--limit", type=int, default=50, help="without --since: the newest N")
    inc = sub.add_parser("incidents", help="the self-healing loop's incidents: signal, action, "
                                           "outcome, MTTR")
    inc.add_argument("--open", action="store_true", help="only incidents not recovered yet")
    inc.add_argument("--limit", type=int, default=50, help="the newest N (default %(default)s)")
    sub.add_parser("status", help="one screen of health, like systemctl status")
    f = sub.add_parser(
        "fleet", help="one row of health per node of an Ansible inventory",
        description="Asks every node of the group on its management address (mesh_mgmt_address, "
                    "else ansible_host); with --ssh, over ssh as Ansible reaches it (ansible_host, "
                    "ansible_user, ansible_port). Exit 1 when a node is unhealthy, does not "
                    "answer, or misses a neighbour its inventory links expect: each host's "
                    "mesh_links (a list of {peer: NAME}; the lab's inventory has them). An "
                    "inventory without mesh_links expects no neighbours and that check is skipped.")
    f.add_argument("action", nargs="?", choices=["status"], default="status",
                   help="what to show (only status, the default)")
    f.add_argument("-i", "--inventory", required=True)
    f.add_argument("--group", default="mesh_nodes")
    f.add_argument("--cert-warn", type=parse_duration, default="1d", metavar="DURATION",
                   help="a certificate expiring within this is a problem (default 1d; SPIRE: 10m)")
    release_mod.add_parser(sub)
    lease_mod.add_parser(sub)
    maintenance_mod.add_parser(sub)
    return p


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    args.command = {"neighbors": "neighbours"}.get(args.command, args.command)
    if args.command in ("release", "lease", "maintenance") and (args.ssh or args.node):
        print(f"meshctl: {args.command} works with the node's own files: run it there "
              f"(ssh NODE sudo meshctl {args.command} ...)", file=sys.stderr)
        return USAGE
    if args.ssh and not args.node and args.command != "fleet":
        print("meshctl: --ssh needs --node HOST (or the fleet command)", file=sys.stderr)
        return USAGE
    try:
        if args.ssh and args.command != "fleet":
            return run_ssh(args, argv, out)
        return run_local(args, out)
    except (AgentUnreachable, ApiError) as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return UNREACHABLE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # meshctl ... | head
        return OK


if __name__ == "__main__":
    raise SystemExit(main())
