"""Planning report: which new links would make the mesh 2-edge-connected, and what they buy."""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable
from typing import Any

import networkx as nx

from mesh_agent.paths.disjoint import _edge_cost

__all__ = ["augmentation_plan", "protection_summary"]

Node = Hashable


def _two_edge_components(
    graph: nx.Graph,
) -> tuple[dict[Node, int], list[int], set[frozenset[Node]]]:
    """Map node -> 2-edge-connected component id, component sizes, and the bridges.

    Two nodes have two edge-disjoint paths exactly when no bridge separates them, i.e. when
    they lie in the same component of the graph minus its bridges.
    """
    bridges = {frozenset(e) for e in nx.bridges(graph)}
    rest = nx.Graph()
    rest.add_nodes_from(graph)
    rest.add_edges_from(e for e in graph.edges if frozenset(e) not in bridges and e[0] != e[1])
    comp: dict[Node, int] = {}
    sizes: list[int] = []
    for cid, nodes in enumerate(nx.connected_components(rest)):
        sizes.append(len(nodes))
        for n in nodes:
            comp[n] = cid
    return comp, sizes, bridges


def _pairs(size: int) -> int:
    return size * (size - 1) // 2


def protection_summary(graph: nx.Graph) -> dict[str, float]:
    """How protected is the mesh against single link failures?

    Returns ``pairs_two_edge_connected`` (fraction of node pairs joined by two edge-disjoint
    paths), ``bridges`` (count) and ``bridge_fraction`` (fraction of links that are bridges),
    plus ``nodes`` and ``links``. Bridges by Tarjan's chain decomposition, O(V + E).
    """
    _, sizes, bridges = _two_edge_components(graph)
    n = graph.number_of_nodes()
    m = sum(1 for u, v in graph.edges if u != v)
    total = _pairs(n)
    return {
        "nodes": float(n),
        "links": float(m),
        "pairs_two_edge_connected": sum(_pairs(s) for s in sizes) / total if total else 0.0,
        "bridges": float(len(bridges)),
        "bridge_fraction": len(bridges) / m if m else 0.0,
    }


def _candidates(
    graph: nx.Graph, weight: str | None, max_distance: float | None
) -> list[tuple[Node, Node, float]]:
    nodes = list(graph.nodes)
    pos: dict[Node, Any] = nx.get_node_attributes(graph, "pos")
    if len(pos) != len(nodes):
        return [
            (u, v, 1.0)
            for i, u in enumerate(nodes)
            for v in nodes[i + 1 :]
            if not graph.has_edge(u, v)
        ]

    def length(u: Node, v: Node) -> float:
        return math.dist(pos[u], pos[v])

    # Express candidate costs in the unit of existing link costs (median cost per distance).
    ratios = []
    longest = 0.0
    for u, v, data in graph.edges(data=True):
        d = length(u, v)
        longest = max(longest, d)
        if d > 0:
            ratios.append(_edge_cost(u, v, data, weight) / d)
    scale = statistics.median(ratios) if ratios else 1.0
    if max_distance is None:
        max_distance = 1.5 * longest if longest > 0 else math.inf
    out = []
    for i, u in enumerate(nodes):
        for v in nodes[i + 1 :]:
            d = length(u, v)
            if d <= max_distance and not graph.has_edge(u, v):
                out.append((u, v, d * scale))
    return out


def augmentation_plan(
    graph: nx.Graph,
    weight: str | None = "cost",
    max_links: int | None = None,
    *,
    max_distance: float | None = None,
) -> list[dict[str, Any]]:
    """Cheapest new links that would make the mesh 2-edge-connected, most useful first.

    Candidates are node pairs within ``max_distance`` when every node has a ``pos`` attribute
    (default: 1.5 x the longest existing link; cost = euclidean length, scaled by the median
    ``weight``-per-length of existing links), otherwise every non-adjacent pair at cost 1.
    The set comes from ``networkx.k_edge_augmentation(G, k=2, avail=...)`` (a 2-approximation
    of the weighted optimum; if the candidates cannot 2-edge-connect the mesh, the partial
    augmentation). Each suggestion ``{u, v, cost, pairs_protected}`` says how many node pairs
    gain a second edge-disjoint path when that single link is added to today's mesh (every
    2-edge-connected component on the bridge-tree path between u and v merges into one).
    Sorted by ``pairs_protected`` descending, then cost; truncated to ``max_links``.
    """
    if graph.number_of_nodes() < 2:
        return []
    avail = _candidates(graph, weight, max_distance)
    cost = {frozenset((u, v)): c for u, v, c in avail}
    try:
        links = list(nx.k_edge_augmentation(graph, k=2, avail=avail))
    except nx.NetworkXUnfeasible:
        links = list(nx.k_edge_augmentation(graph, k=2, avail=avail, partial=True))

    comp, sizes, bridges = _two_edge_components(graph)
    tree = nx.Graph()  # bridge tree (forest): 2-edge-connected components joined by bridges
    tree.add_nodes_from(range(len(sizes)))
    tree.add_edges_from((comp[u], comp[v]) for u, v in (tuple(b) for b in bridges))
    plan: list[dict[str, Any]] = []
    for u, v in links:
        cu, cv = comp[u], comp[v]
        gained = 0
        if cu != cv and nx.has_path(tree, cu, cv):
            merged = nx.shortest_path(tree, cu, cv)
            gained = _pairs(sum(sizes[c] for c in merged)) - sum(_pairs(sizes[c]) for c in merged)
        plan.append({"u": u, "v": v, "cost": cost[frozenset((u, v))], "pairs_protected": gained})
    plan.sort(key=lambda s: (-s["pairs_protected"], s["cost"]))
    return plan if max_links is None else plan[:max_links]
