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
    nadj: Adjacency,
    s: int,
    t: int,
    penal: dict[int, set[int]],
    penalty: float,
    h: Sequence[float] | None = None,
) -> list[int] | None:
    """Cheapest s-t vertex path where each arc in ``penal`` costs ``penalty`` extra.

    Searched backwards from ``t`` (A*, Hart, Nilsson and Raphael 1968) when ``h`` gives every
    vertex's distance from ``s`` on the unpenalised graph: penalties only add cost, so ``h`` is
    an admissible and consistent heuristic (triangle inequality on an undirected graph) and
    the search settles an ellipse around ``s`` and ``t`` instead of a ball. ``h=None`` is
    plain Dijkstra. ``O(E log V)`` either way.
    """
    n = len(nadj)
    hh: Sequence[float] = h if h is not None else [0.0] * n
    dist = [INF] * n
    succ = [-1] * n
    done = bytearray(n)
    dist[t] = 0.0
    heap: list[tuple[float, int]] = [(hh[t], t)]
    pop, push = heappop, heappush
    while heap:
        _, v = pop(heap)
        if done[v]:
            continue
        done[v] = 1
        if v == s:
            break
        d = dist[v]
        pen = penal.get(v)
        for u, c in nadj[v].items():
            nd = d + c
            if pen is not None and u in pen:
                nd += penalty
            if nd < dist[u] and not done[u]:
                dist[u] = nd
                succ[u] = v
                push(heap, (nd + hh[u], u))
    if not done[s]:
        return None
    path = [s]
    while path[-1] != t:
        path.append(succ[path[-1]])
    return path


def backup_vertices(
    net: Network,
    primary: Sequence[int],
    bridges: Collection[Link] = (),
    h: Sequence[float] | None = None,
) -> list[int] | None:
    """Maximally disjoint backup on plain vertex ids (see :func:`maximally_disjoint_backup`).

    ``bridges`` are links every path must share anyway; leaving them unpenalised changes no
    ranking but keeps distances small. ``h`` (distances from ``primary[0]``, e.g. from
    :class:`~mesh_agent.paths.disjoint.SourceTree`) turns the search into A*.
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
    penalty = 1.0 + net.total_cost
    path = penalised_dijkstra(net.nadj, primary[0], primary[-1], penal, penalty, h)
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
