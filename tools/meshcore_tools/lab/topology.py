"""Lab topologies: generators, a loader for hand-made files, and the address plan.

A topology is a YAML mapping::

    name: community-mesh
    nodes:
      - name: node01
        pos: [0.1, 0.2]        # optional, used by the random geometric generator
    links:
      - {a: node01, b: node02, cost: 1, rate: 10mbit, loss: 5}   # cost, rate, loss optional

``normalise()`` turns any topology into the form the lab and the inventory use:
every node gets a node address (a /32 that lives on ``lo``) and a management
address, every link gets a /31 and an interface name on each end (``mesh0``...).
The plan is deterministic, so the same topology always gives the same addresses.
"""

from __future__ import annotations

import ipaddress
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

NODE_NET = ipaddress.IPv4Network("10.77.0.0/16")
LINK_NET = ipaddress.IPv4Network("10.78.0.0/16")
MGMT_NET = ipaddress.IPv4Network("10.79.0.0/16")
MGMT_GATEWAY = MGMT_NET.network_address + 1
MONITOR_MGMT = MGMT_NET.network_address + 2
MAX_NODES = 1000
BUILTIN = ("grid", "rgg", "ladder", "ringtree", "community")
TOPOLOGY_DIR = Path(__file__).resolve().parent / "topologies"


class TopologyError(ValueError):
    """A topology file or generator request is invalid."""


@dataclass
class Topology:
    name: str
    nodes: list[dict[str, Any]]
    links: list[dict[str, Any]] = field(default_factory=list)

    def graph(self) -> nx.Graph:
        g = nx.Graph()
        for n in self.nodes:
            g.add_node(n["name"], **{k: v for k, v in n.items() if k != "name"})
        for link in self.links:
            g.add_edge(link["a"], link["b"], cost=link.get("cost", 1))
        return g


def node_name(i: int, total: int) -> str:
    width = max(2, len(str(total)))
    return f"node{i:0{width}d}"


def grid(n: int) -> Topology:
    """A near-square grid of n nodes (row-major), 4-neighbour links."""
    cols = max(1, math.ceil(math.sqrt(n)))
    names = [node_name(i + 1, n) for i in range(n)]
    links = []
    for i in range(n):
        c = i % cols
        if c + 1 < cols and i + 1 < n:
            links.append({"a": names[i], "b": names[i + 1]})
        if i + cols < n:
            links.append({"a": names[i], "b": names[i + cols]})
    nodes = [{"name": names[i], "pos": [i % cols, i // cols]} for i in range(n)]
    return Topology(f"grid-{n}", nodes, links)


def ladder(n: int) -> Topology:
    """A 2 x n/2 ladder: the classic failover test shape (every link has a detour)."""
    if n % 2:
        raise TopologyError(f"a ladder needs an even number of nodes, got {n}")
    half = n // 2
    names = [node_name(i + 1, n) for i in range(n)]
    links = []
    for i in range(half):
        top, bottom = names[i], names[half + i]
        links.append({"a": top, "b": bottom})
        if i + 1 < half:
            links.append({"a": top, "b": names[i + 1]})
            links.append({"a": bottom, "b": names[half + i + 1]})
    nodes = [{"name": names[i], "pos": [i % half, i // half]} for i in range(n)]
    return Topology(f"ladder-{n}", nodes, links)


def random_geometric(n: int, seed: int = 1, degree: float = 6.0) -> Topology:
    """A seeded random geometric graph in the unit square, made connected.

    The radius is chosen for the requested mean degree (pi r^2 n = degree); any
    component left over is joined to its nearest neighbour in the rest, the way a
    real deployment would add one more long link. Costs grow with distance (1..10).
    """
    rng = random.Random(seed)
    radius = math.sqrt(degree / (math.pi * n))
    pos = {node_name(i + 1, n): (rng.random(), rng.random()) for i in range(n)}
    g = nx.random_geometric_graph(list(pos), radius, pos=pos)
    comps = sorted(nx.connected_components(g), key=len, reverse=True)
    main = set(comps[0])
    for comp in comps[1:]:
        a, b = min(
            ((u, v) for u in comp for v in main),
            key=lambda e: math.dist(pos[e[0]], pos[e[1]]),
        )
        g.add_edge(a, b)
        main |= comp
    links = []
    for u, v in sorted(g.edges()):
        d = math.dist(pos[u], pos[v])
        links.append({"a": u, "b": v, "cost": max(1, min(10, round(10 * d / radius)))})
    nodes = [{"name": k, "pos": [round(x, 4), round(y, 4)]} for k, (x, y) in pos.items()]
    return Topology(f"rgg-{n}-s{seed}", nodes, links)


def ring_tree(n: int, seed: int = 1) -> Topology:
    """A seeded community-shaped mesh: rings hung on rings, tree-like, with long cycles.

    Grown as an ear decomposition (Whitney 1932), so every link lies on a cycle
    (2-edge-connected, as the cores of the published Ninux and Freifunk
    snapshots the issue-16 harness used): a backbone ring of 6-10 nodes, then
    rings of 2-8 new nodes, each hung between an existing node and a second one
    at most two hops from it (or the same node: a district loop behind one
    rooftop), until ``n`` nodes; then about one short chord (two existing
    nodes two or three hops apart) per eight nodes, the extra rooftop links a
    real mesh grows. Attachment prefers nodes of higher degree (supernodes).
    Hop-count costs (cost 1 on every link).
    """
    if n < 6:
        raise TopologyError(f"a ring-and-tree mesh needs at least 6 nodes, got {n}")
    rng = random.Random(seed)
    names = [node_name(i + 1, n) for i in range(n)]
    g = nx.Graph()
    first = min(n, rng.randint(6, 10))
    nx.add_cycle(g, names[:first])
    used = first
    while used < n:
        new = names[used : used + min(n - used, rng.randint(2, 8))]
        used += len(new)
        nodes = sorted(g)
        a = rng.choices(nodes, weights=[g.degree(v) ** 2 for v in nodes])[0]
        near = sorted(nx.single_source_shortest_path_length(g, a, cutoff=2))
        b = a if rng.random() < 0.25 else rng.choice(near)
        nx.add_path(g, [a, *new, b])
    for _ in range(round(n / 8)):
        nodes = sorted(g)
        a = rng.choice(nodes)
        dist = nx.single_source_shortest_path_length(g, a, cutoff=3)
        far = sorted(v for v, d in dist.items() if d >= 2)
        if far:
            g.add_edge(a, rng.choice(far))
    links = [{"a": u, "b": v, "cost": 1} for u, v in sorted(tuple(sorted(e)) for e in g.edges())]
    nodes_out = [{"name": v} for v in names]
    return Topology(f"ringtree-{n}-s{seed}", nodes_out, links)


def load(path: Path) -> Topology:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TopologyError(f"{path}: cannot read topology: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise TopologyError(f"{path}: a topology is a mapping with a 'nodes' list")
    nodes = [n if isinstance(n, dict) else {"name": str(n)} for n in data["nodes"]]
    links = []
    for i, link in enumerate(data.get("links") or []):
        if isinstance(link, list | tuple) and len(link) == 2:
            link = {"a": link[0], "b": link[1]}
        if not isinstance(link, dict) or "a" not in link or "b" not in link:
            raise TopologyError(f"{path}: links[{i}] needs 'a' and 'b'")
        links.append(dict(link))
    return Topology(str(data.get("name", path.stem)), nodes, links)


def build(kind: str, nodes: int, seed: int = 1) -> Topology:
    """Return the topology named by ``kind``: a generator, a shipped file, or a path."""
    if kind == "grid":
        return grid(nodes)
    if kind == "ladder":
        return ladder(nodes)
    if kind == "rgg":
        return random_geometric(nodes, seed)
    if kind == "ringtree":
        return ring_tree(nodes, seed)
    shipped = TOPOLOGY_DIR / f"{kind}.yml"
    path = shipped if shipped.exists() else Path(kind)
    if not path.exists():
        raise TopologyError(
            f"unknown topology {kind!r}: use one of {', '.join(BUILTIN)}, "
            f"a file in {TOPOLOGY_DIR.name}/, or a path to a YAML file"
        )
    return load(path)


def validate(topo: Topology, *, connected: bool = True) -> None:
    """Raise TopologyError naming the first problem; ``connected=False`` allows islands."""
    names = [n.get("name") for n in topo.nodes]
    if not names:
        raise TopologyError(f"{topo.name}: no nodes")
    if len(names) > MAX_NODES:
        raise TopologyError(f"{topo.name}: {len(names)} nodes, the lab supports {MAX_NODES}")
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name.replace("-", "").isalnum():
            raise TopologyError(f"{topo.name}: bad node name {name!r} (letters, digits, '-')")
        if name in seen:
            raise TopologyError(f"{topo.name}: duplicate node {name!r}")
        seen.add(name)
    pairs: set[frozenset[str]] = set()
    for link in topo.links:
        a, b = link["a"], link["b"]
        for end in (a, b):
            if end not in seen:
                raise TopologyError(f"{topo.name}: link {a}-{b} names unknown node {end!r}")
        if a == b:
            raise TopologyError(f"{topo.name}: link {a}-{b} is a loop")
        if frozenset((a, b)) in pairs:
            raise TopologyError(f"{topo.name}: duplicate link {a}-{b}")
        pairs.add(frozenset((a, b)))
        cost = link.get("cost", 1)
        if not isinstance(cost, int | float) or cost <= 0:
            raise TopologyError(f"{topo.name}: link {a}-{b} cost must be > 0, got {cost!r}")
        loss = link.get("loss", 0)
        if not isinstance(loss, int | float) or not 0 <= loss < 100:
            raise TopologyError(f"{topo.name}: link {a}-{b} loss must be 0..99 %, got {loss!r}")
    if connected and not nx.is_connected(topo.graph()):
        raise TopologyError(f"{topo.name}: the topology is not connected")


def normalise(topo: Topology, *, connected: bool = True) -> dict[str, Any]:
    """Assign addresses and interface names; return the lab's state document.

    ``connected=False`` accepts a topology with islands (a test that wires its
    links later); the lab itself always wants a connected mesh.
    """
    validate(topo, connected=connected)
    index = {n["name"]: i for i, n in enumerate(topo.nodes, start=1)}
    nodes: dict[str, dict[str, Any]] = {}
    for n in topo.nodes:
        i = index[n["name"]]
        nodes[n["name"]] = {
            "name": n["name"],
            "index": i,
            "node_address": str(NODE_NET.network_address + i),
            "mgmt_address": str(MGMT_NET.network_address + 10 + i),
            "pos": n.get("pos"),
            "links": [],
        }
    links = []
    for j, link in enumerate(topo.links):
        a, b = link["a"], link["b"]
        base = LINK_NET.network_address + 2 * j
        ends = []
        for end, addr, peer, peer_addr in ((a, base, b, base + 1), (b, base + 1, a, base)):
            ifname = f"mesh{len(nodes[end]['links'])}"
            entry = {
                "ifname": ifname,
                "address": f"{addr}/31",
                "peer": peer,
                "peer_address": str(peer_addr),
                "cost": link.get("cost", 1),
            }
            nodes[end]["links"].append(entry)
            ends.append(ifname)
        links.append(
            {
                "a": a,
                "b": b,
                "a_ifname": ends[0],
                "b_ifname": ends[1],
                "cost": link.get("cost", 1),
                "rate": link.get("rate"),
                "loss": link.get("loss", 0),
            }
        )
    return {"name": topo.name, "nodes": nodes, "links": links}
