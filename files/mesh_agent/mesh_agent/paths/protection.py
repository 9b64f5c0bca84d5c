"""Protection for tree-like meshes: maximally disjoint backups and per-link detours.

Community meshes have many bridges, so a fully disjoint second path often does not exist.
The backup then shares the unavoidable links with the primary and nothing else.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Hashable, Sequence
from heapq import heappop, heappush

import networkx as nx

from mesh_agent.paths.disjoint import INF, Adjacency, Network, PathError, check_query

__all__ = ["bridge_set", "link_protection", "maximally_disjoint_backup"]

Node = Hashable
Link = frozenset[Node]


def bridge_set(graph: nx.Graph) -> set[Link]:
    """All bridges of ``graph`` as unordered links (Tarjan 1974 chain decomposition, O(V+E))."""
    return {frozenset(e) for e in nx.bridges(graph)}


def link_protection(
    graph: nx.Graph, path: Sequence[Node], *, bridges: Collection[Link] | None = None
) -> dict[tuple[Node, Node], bool]:
    """For each link of ``path`` (in path order): does a detour around it exist?

    Removing a link of a simple source-target path keeps source and target connected exactly
    when the link is not a bridge (a bridge on the path separates its two ends), so this is
    one bridge lookup per link. Pass ``bridges`` (from :func:`bridge_set`) to reuse them.
    """
    if bridges is None:
        bridges = bridge_set(graph)
    return {(a, b): frozenset((a, b)) not in bridges for a, b in itertools.pairwise(path)}


def penalised_dijkstra(
    nadj: Adjacency, s: int, t: int, penal: dict[int, set[int]], penalty: float
) -> list[int] | None:
    """Cheapest s-t vertex path where each arc in ``penal`` costs ``penalty`` extra."""
    n = len(nadj)
    dist = [INF] * n
    pred = [-1] * n
    done = bytearray(n)
    dist[s] = 0.0
    heap: list[tuple[float, int]] = [(0.0, s)]
    while heap:
        d, u = heappop(heap)
        if done[u]:
            continue
        done[u] = 1
        if u == t:
            break
        pen = penal.get(u)
        for v, c in nadj[u].items():
            nd = d + c
            if pen is not None and v in pen:
                nd += penalty
            if nd < dist[v] and not done[v]:
                dist[v] = nd
                pred[v] = u
                heappush(heap, (nd, v))
    if not done[t]:
        return None
    path = [t]
    while path[-1] != s:
        path.append(pred[path[-1]])
    path.reverse()
    return path


def backup_vertices(
    net: Network, primary: Sequence[int], bridges: Collection[Link] = ()
) -> list[int] | None:
    """Maximally disjoint backup on plain vertex ids (see :func:`maximally_disjoint_backup`).

    ``bridges`` are links every path must share anyway; leaving them unpenalised changes no
    ranking but keeps distances small, so Dijkstra stops early.
    """
    nodes = net.nodes
    penal: dict[int, set[int]] = {}
    for a, b in itertools.pairwise(primary):
        if frozenset((nodes[a], nodes[b])) in bridges:
            continue
        penal.setdefault(a, set()).add(b)
        penal.setdefault(b, set()).add(a)
    # Bigger than any simple path's cost, so one shared link outweighs every cost difference:
    # the result minimises (shared links, cost) lexicographically.
    penalty = 1.0 + sum(sum(d.values()) for d in net.nadj) / 2.0
    path = penalised_dijkstra(net.nadj, primary[0], primary[-1], penal, penalty)
    if path is None or path == list(primary):
        return None
    return path


def maximally_disjoint_backup(
    graph: nx.Graph,
    source: Node,
    target: Node,
    primary: Sequence[Node],
    weight: str | None = "cost",
) -> list[Node] | None:
    """Backup path sharing as few links with ``primary`` as possible, then cheapest.

    Dijkstra where every primary link costs a penalty larger than the sum of all link costs,
    so the minimum is lexicographic in (number of shared links, cost); ``O(E log V)``. On a
    mesh where the only unavoidable shared links are bridges, the backup shares exactly the
    bridges of ``primary`` (after Bhandari 1999, "maximally disjoint paths").

    Returns ``None`` when the backup would be ``primary`` itself (it is the only path) or the
    target is unreachable.

    >>> g = nx.Graph([("s", "a"), ("a", "t"), ("s", "b"), ("b", "a"), ("t", "z")])
    >>> maximally_disjoint_backup(g, "s", "t", ["s", "a", "t"])   # a-t is a bridge
    ['s', 'b', 'a', 't']
    """
    check_query(graph, source, target, 1)
    if len(primary) < 2 or primary[0] != source or primary[-1] != target:
        raise PathError(f"primary must run from {source!r} to {target!r}, got {primary!r}")
    for a, b in itertools.pairwise(primary):
        if not graph.has_edge(a, b):
            raise PathError(f"primary uses ({a!r}, {b!r}), which is not an edge of the graph")
    net = Network(graph, weight, "edge")
    found = backup_vertices(net, [net.index[n] for n in primary])
    return None if found is None else net.to_nodes(found)
