"""The fault classes: what each one does to which nodes, as node-side operations.

Each class turns a target (a link, a node, one side of a partition) into the
operations every affected node journals and applies (:mod:`meshcore_chaos.node.ops`).
No I/O here: the classes read the topology and return plain data, so each is
tested for what it would do without a network, and the same plan runs on the
netns lab, the podman lab and hardware. ``HARDWARE`` names the command a real
node uses where it differs from the lab's.

=============  ==========================================  =====================
class          injection                                   target
=============  ==========================================  =====================
silent_cut     nft netdev ingress drop on both ends,       link a-b
               carrier up
link_down      ``ip link set down`` on one end (the        link a-b
               kernel sees it, the peer loses carrier)
lossy          nft ``numgen random`` drop at N % on both   link a-b
               ends' ingress
slow           tbf rate cap on both ends (owned handle)    link a-b
node_crash     the agent SIGKILLed; ``node`` mode also     node
               silences every link of the node (power off)
frozen_agent   SIGSTOP on the agent (kernel still          node
               forwarding on its routes)
partition      silent cut of every link between a node     nodes (one side)
               set and the rest
cpu_starvation a cpu cgroup quota on the agent             node
rogue          unsigned / replayed advert flood from a     node
               node to its neighbours (security verdict)
runaway_unit   a SCHED_FIFO busy loop inside a running     node
               systemd unit (``unit``), on the agent's
               CPU (the agent pinned to one, ``cpu``);
               a restart of the unit ends it
=============  ==========================================  =====================
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

TABLE = "meshcore_chaos"
AGENT_MATCH = "mesh_agent run"  # the agent as netns labs start it (python -m mesh_agent run)
# The agent as systemd runs it (mesh-agent.service's ExecStart: the lab's nodes, a fleet).
UNIT_AGENT_MATCH = "mesh-agent run"
ADVERT_PORT = 6768
UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@-]{1,200}\.service$")

Op = dict[str, Any]


class FaultError(ValueError):
    """A fault that cannot be planned (unknown class, bad target or parameter)."""


class Topo:
    """The parts of a normalised lab topology (:func:`meshcore_tools.lab.topology.normalise`)
    a fault plan needs: interfaces and addresses per link end."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        self.state = state
        self.graph = nx.Graph()
        self.graph.add_nodes_from(state["nodes"])
        for link in state["links"]:
            self.graph.add_edge(link["a"], link["b"], cost=link.get("cost", 1))

    def end(self, node: str, peer: str) -> Mapping[str, Any]:
        for end in self.state["nodes"][node]["links"]:
            if end["peer"] == peer:
                return dict(end)
        raise FaultError(f"no link {node}-{peer}")

    def ifname(self, node: str, peer: str) -> str:
        return str(self.end(node, peer)["ifname"])

    def neighbours(self, node: str) -> list[str]:
        return [str(e["peer"]) for e in self.state["nodes"][node]["links"]]

    def address(self, node: str) -> str:
        return str(self.state["nodes"][node]["node_address"])


@dataclass(frozen=True)
class Fault:
    """One injection: a class, its target, its parameters, and the id every node journals."""

    cls: str
    target: tuple[str, ...]
    id: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        return f"{self.cls}:{'-'.join(self.target)}"


@dataclass(frozen=True)
class Options:
    """What a plan needs to know about the nodes (the lab's or the fleet's)."""

    agent_match: str = AGENT_MATCH
    # How the node restarts its agent after a node_crash (argv; hardware/podman lab:
    # systemctl start mesh-agent.service). Empty: systemd's Restart= does it.
    restart: Sequence[str] = ()
    restart_log: str | None = None
    # Per node, where each node's agent starts differently (a netns lab's config paths).
    restart_by_node: Mapping[str, Sequence[str]] = field(default_factory=dict)
    python: str = "python3"


def _drop_table(fault: Fault, devs: Sequence[str], pct: int | None = None) -> Op:
    rule = "drop" if pct is None else f"numgen random mod 100 < {pct} drop"
    chains = "\n".join(
        f"  chain in_{dev} {{\n    type filter hook ingress device \"{dev}\" priority -10;\n"
        f"    {rule}\n  }}" for dev in devs)
    return {"op": "nft", "family": "netdev", "table": f"{TABLE}_{fault.id}", "body": chains}


def _link(fault: Fault, topo: Topo) -> tuple[str, str]:
    if len(fault.target) != 2:
        raise FaultError(f"{fault.cls} targets a link a-b, got {fault.target}")
    a, b = fault.target
    topo.end(a, b)
    return a, b


def _node(fault: Fault, topo: Topo) -> str:
    if len(fault.target) != 1 or fault.target[0] not in topo.state["nodes"]:
        raise FaultError(f"{fault.cls} targets one node of the topology, got {fault.target}")
    return fault.target[0]


def plan(fault: Fault, topo: Topo, opts: Options = Options()) -> dict[str, list[Op]]:
    """Node -> the operations it journals and applies for this fault."""
    p = fault.params
    if fault.cls in ("silent_cut", "lossy"):
        a, b = _link(fault, topo)
        loss: int | None = None
        if fault.cls == "lossy":
            loss = int(p.get("loss_pct", 30))
            if not 1 <= loss <= 99:
                raise FaultError(f"lossy loss_pct must be 1..99, got {loss}")
        return {a: [_drop_table(fault, [topo.ifname(a, b)], loss)],
                b: [_drop_table(fault, [topo.ifname(b, a)], loss)]}
    if fault.cls == "link_down":
        a, b = _link(fault, topo)
        return {a: [{"op": "link_down", "dev": topo.ifname(a, b)}]}
    if fault.cls == "slow":
        a, b = _link(fault, topo)
        rate = str(p.get("rate", "64kbit"))
        return {n: [{"op": "tbf", "dev": topo.ifname(n, m), "rate": rate}]
                for n, m in ((a, b), (b, a))}
    if fault.cls == "node_crash":
        n = _node(fault, topo)
        kill: Op = {"op": "signal", "signal": "KILL", "match": opts.agent_match}
        restart = opts.restart_by_node.get(n, opts.restart)
        if restart:
            kill["restart"] = list(restart)
            kill["restart_log"] = opts.restart_log
        ops = [kill]
        if p.get("mode", "agent") == "node":  # the whole node gone: silent on every link
            ops.insert(0, _drop_table(fault, [topo.ifname(n, m) for m in topo.neighbours(n)]))
        return {n: ops}
    if fault.cls == "frozen_agent":
        n = _node(fault, topo)
        return {n: [{"op": "signal", "signal": "STOP", "match": opts.agent_match}]}
    if fault.cls == "cpu_starvation":
        n = _node(fault, topo)
        pct = float(p.get("quota_pct", 5))
        if not 0 < pct < 100:
            raise FaultError(f"cpu_starvation quota_pct must be in (0, 100), got {pct}")
        return {n: [{"op": "cgroup", "match": opts.agent_match, "quota_pct": pct}]}
    if fault.cls == "partition":
        side = set(fault.target)
        if not side or not side < set(topo.graph) or any(n not in topo.graph for n in side):
            raise FaultError(f"partition needs a proper subset of the nodes, got {fault.target}")
        out: dict[str, list[str]] = {}
        for a, b in topo.graph.edges:
            if (a in side) != (b in side):
                out.setdefault(a, []).append(topo.ifname(a, b))
                out.setdefault(b, []).append(topo.ifname(b, a))
        if not out:
            raise FaultError("that side has no link to the rest: nothing to cut")
        return {n: [_drop_table(fault, devs)] for n, devs in out.items()}
    if fault.cls == "rogue":
        n = _node(fault, topo)
        targets = ",".join(str(topo.end(m, n)["address"]).split("/")[0]
                           for m in topo.neighbours(n))
        argv = [opts.python, "-m", "meshcore_chaos.node.flood", "--tag", f"{TABLE}:{fault.id}",
                "--port", str(p.get("port", ADVERT_PORT)), "--targets", targets,
                "--mode", str(p.get("mode", "garbage")), "--rate", str(p.get("rate", 500)),
                "--seconds", str(p.get("seconds", 10))]
        if p.get("datagrams"):
            argv += ["--datagrams", str(p["datagrams"])]
        return {n: [{"op": "spawn", "argv": argv, "log": p.get("log")}]}
    if fault.cls == "runaway_unit":
        n = _node(fault, topo)
        unit, cpu = str(p.get("unit", "")), p.get("cpu", "last")
        if not UNIT_RE.match(unit):
            raise FaultError(f"runaway_unit needs unit: a service name (x.service), got {unit!r}")
        if cpu != "last" and not (isinstance(cpu, int) and cpu >= 0):
            raise FaultError(f"runaway_unit cpu must be a CPU number or 'last', got {cpu!r}")
        seconds = float(p.get("seconds", 300))
        if not 0 < seconds <= 3600:
            raise FaultError(f"runaway_unit seconds must be in (0, 3600], got {seconds}")
        argv = [opts.python, "-m", "meshcore_chaos.node.runaway", "--tag", f"{TABLE}:{fault.id}",
                "--unit", unit, "--cpu", str(cpu), "--seconds", f"{seconds:g}"]
        cpus = "last" if cpu == "last" else [cpu]
        return {n: [{"op": "affinity", "match": opts.agent_match, "cpus": cpus},
                    {"op": "spawn", "argv": argv, "log": p.get("log"), "ready_s": 1.0}]}
    raise FaultError(f"unknown fault class {fault.cls!r} (one of {', '.join(CLASSES)})")


@dataclass(frozen=True)
class ClassInfo:
    target: str  # link | node | partition
    mttr: bool  # False: a verdict, not a recovery time
    hardware: str


CLASSES: Mapping[str, ClassInfo] = {
    "silent_cut": ClassInfo("link", True, "nft netdev drop on the radio interface for the "
                            "peer's MAC (one radio carries several links)"),
    "link_down": ClassInfo("link", True, "ip link set <iface> down: on one radio this takes "
                           "every link of it; per-link carrier loss is a lab fault"),
    "lossy": ClassInfo("link", True, "the same nft numgen drop"),
    "slow": ClassInfo("link", True, "the same tbf qdisc"),
    "node_crash": ClassInfo("node", True, "systemctl kill -s KILL mesh-agent.service (mode "
                            "agent); mode node: power the Pi off / podman stop in the lab"),
    "frozen_agent": ClassInfo("node", True, "systemctl kill -s STOP mesh-agent.service"),
    "partition": ClassInfo("partition", True, "the same nft drops on each cut link"),
    "cpu_starvation": ClassInfo("node", True, "systemctl set-property --runtime "
                                "mesh-agent.service CPUQuota=N% (cgroup v2)"),
    "rogue": ClassInfo("node", False, "the same flooder (needs python3 on the node)"),
    "runaway_unit": ClassInfo("node", True, "the same helper; a Pi has a core per task, so "
                              "use cpu: last there too, or one helper per core for a runaway "
                              "that takes the whole node"),
}


def bisect(topo: Topo, seed: int, exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """One side of a seeded Kernighan-Lin bisection (Kernighan & Lin 1970): a partition
    with few links cut and two halves of similar size.

    With *exclude* (the blast radius's), no excluded node has a link cut: each one is
    kept in one block with its neighbours (overlapping blocks merge), the bisection runs
    on the quotient graph of those blocks (its edge weights count the links between
    them) and the side is expanded back to nodes. The halves are then of similar size
    in blocks, not nodes. When the blocks leave nothing to split (fewer than two), the
    plain bisection is returned and the runner's blast-radius check skips the step,
    naming the nodes."""
    g = topo.graph
    keep = [n for n in exclude if n in g]
    if keep:
        merged = nx.Graph()
        merged.add_nodes_from(g)
        for n in keep:
            merged.add_edges_from((n, m) for m in g[n])
        blocks = [frozenset(c) for c in nx.connected_components(merged)]
        if len(blocks) >= 2:
            q = nx.quotient_graph(g, blocks)
            a, _ = nx.algorithms.community.kernighan_lin_bisection(q, seed=seed)
            return tuple(sorted(n for block in a for n in block))
    a, _ = nx.algorithms.community.kernighan_lin_bisection(g, seed=seed)
    return tuple(sorted(a))


def pick_target(cls: str, topo: Topo, rng: random.Random,
                exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """A random target of the class's kind, away from ``exclude`` (the probes' endpoints)."""
    kind = CLASSES[cls].target
    if kind == "link":
        edges = sorted(tuple(sorted(e)) for e in topo.graph.edges)
        return tuple(rng.choice(edges))
    if kind == "node":
        nodes = sorted(n for n in topo.graph if n not in exclude) or sorted(topo.graph)
        return (rng.choice(nodes),)
    return bisect(topo, rng.randrange(1 << 30))
