"""The mesh's forwarding state as one picture: which pairs route, which loop, which have none.

Input: every node's kernel routes (``ip -j route show``, one dump per node),
the topology's addresses, and the links that are currently usable. Each
pair's path is followed next hop by next hop through the dumps (the primary
route: lowest metric), as a packet would go. No I/O here.

A pair is *connected* when the usable links join its two ends; *routed* when
following the next hops from the source reaches the destination; *looping*
when the walk comes back to a node it has visited; otherwise *black-holed*
(a node on the way has no route, or a next hop over a dead link). Global
reconvergence is the moment every connected pair is routed (no loop, no hole).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

NextHops = dict[str, dict[str, str]]  # node -> destination node -> next-hop node


def next_hops(state: Mapping[str, Any], dumps: Mapping[str, list[dict[str, Any]]]) -> NextHops:
    """Node -> destination -> next hop, from each node's ``ip -j route show``."""
    by_addr: dict[str, str] = {}
    for name, node in state["nodes"].items():
        by_addr[str(node["node_address"])] = name
        for end in node["links"]:
            by_addr[str(end["address"]).split("/")[0]] = name
    out: NextHops = {}
    for node, routes in dumps.items():
        best: dict[str, tuple[int, str]] = {}
        for r in routes:
            dst = by_addr.get(str(r.get("dst", "")).removesuffix("/32"))
            if dst is None or dst == node:
                continue
            gw = r.get("gateway") or next(
                (h.get("gateway") for h in r.get("nexthops", []) if h.get("gateway")), None)
            hop = by_addr.get(str(gw)) if gw else None
            metric = int(r.get("metric", 0))
            if hop is not None and (dst not in best or metric < best[dst][0]):
                best[dst] = (metric, hop)
        out[node] = {dst: hop for dst, (_, hop) in best.items()}
    return out


@dataclass
class Picture:
    connected: int = 0
    routed: int = 0
    looping: list[tuple[str, str]] = field(default_factory=list)
    holes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return self.routed == self.connected

    @property
    def share(self) -> float:
        """The share of connected pairs that are routed (1.0 when none is connected)."""
        return self.routed / self.connected if self.connected else 1.0


def connected_pairs(nodes: Iterable[str],
                    usable: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every ordered pair of ``nodes`` that the ``usable`` links join (same connected component)."""
    g = nx.Graph()
    g.add_nodes_from(nodes)
    g.add_edges_from(usable)
    return [(src, dst) for comp in nx.connected_components(g)
            for src in sorted(comp) for dst in sorted(comp) if src != dst]


def walk(hops: NextHops, src: str, dst: str,
         up: Container[frozenset[str]] | None = None) -> tuple[list[str], str]:
    """A packet's way from *src* to *dst*, next hop by next hop, and how it ended:
    ``arrived``; ``hole`` (no route at the last node, or its next hop is over a link not
    in *up*); ``loop`` (the next hop is a node already passed: the path ends with that
    node, so its last link is the one the packet loops over). The one walk every caller
    uses (:func:`picture`, the chaos probes' path, the learning bench's crossings)."""
    path, seen = [src], {src}
    while path[-1] != dst:
        hop = hops.get(path[-1], {}).get(dst)
        if hop is None or (up is not None and frozenset((path[-1], hop)) not in up):
            return path, "hole"
        path.append(hop)
        if hop in seen:
            return path, "loop"
        seen.add(hop)
    return path, "arrived"


def picture(hops: NextHops, nodes: Iterable[str],
            usable: Iterable[tuple[str, str]]) -> Picture:
    """Every ordered pair of ``nodes`` that ``usable`` links connect, walked through ``hops``."""
    usable = list(usable)
    up = {frozenset(e) for e in usable}
    pic = Picture()
    for src, dst in connected_pairs(nodes, usable):
        pic.connected += 1
        end = walk(hops, src, dst, up)[1]
        if end == "hole":
            pic.holes.append((src, dst))
        elif end == "loop":
            pic.looping.append((src, dst))
        else:
            pic.routed += 1
    return pic
