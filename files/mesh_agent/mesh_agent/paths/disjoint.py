"""Minimum-cost k edge- or node-disjoint paths (Suurballe 1974, Bhandari 1999).

The residual network is kept on integer vertex ids so that the inner Dijkstra loop touches
only lists and small dicts; :class:`Network` is built once per graph and shared by every
destination (see :mod:`mesh_agent.paths.table`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Iterable, Sequence
from heapq import heappop, heappush
from typing import Any

import networkx as nx

__all__ = ["DISJOINT_MODES", "Network", "PathError", "k_disjoint_paths", "path_cost"]

INF = math.inf
DISJOINT_MODES = frozenset({"edge", "node"})

Node = Hashable
Adjacency = list[dict[int, float]]


class PathError(ValueError):
    """Bad input to a path computation: unknown node, negative cost, bad parameter."""


def _edge_cost(u: Node, v: Node, data: dict[str, Any], weight: str | None) -> float:
    if weight is None:
        return 1.0
    raw = data.get(weight, 1)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise PathError(f"edge ({u!r}, {v!r}) has non-numeric {weight!r} {raw!r}")
    cost = float(raw)
    if math.isnan(cost) or cost < 0 or math.isinf(cost):
        raise PathError(f"edge ({u!r}, {v!r}) has invalid {weight!r} {raw!r} (must be finite >= 0)")
    return cost


class Network:
    """Integer-indexed view of an undirected graph, with an optional node-split residual.

    ``nadj`` is the plain graph (vertex ``i`` is ``nodes[i]``). ``adj`` is the base residual
    network the flow algorithm runs on: equal to ``nadj`` for edge-disjoint paths; for
    node-disjoint paths every node ``i`` is split into ``2i`` (in) -> ``2i+1`` (out) with a
    zero-cost arc, and an undirected edge {u, v} becomes ``2u+1 -> 2v`` and ``2v+1 -> 2u``.
    ``radj`` is ``adj`` reversed (``radj[v][u]`` = cost of arc ``(u, v)``): the same lists
    for edge-disjoint paths, where every arc has its twin. None of them is mutated after
    construction; solvers copy the dicts they change. ``total_cost`` is the sum of all link
    costs (a bound above every simple path's cost).
    """

    __slots__ = ("adj", "index", "nadj", "nodes", "radj", "split", "total_cost", "weight")

    def __init__(self, graph: nx.Graph, weight: str | None = "cost", disjoint: str = "edge"):
        if disjoint not in DISJOINT_MODES:
            raise PathError(f"disjoint must be 'edge' or 'node', not {disjoint!r}")
        if graph.is_directed() or graph.is_multigraph():
            raise PathError("graph must be an undirected nx.Graph (not directed, not multigraph)")
        self.weight = weight
        self.split = disjoint == "node"
        self.nodes: list[Node] = list(graph.nodes)
        self.index: dict[Node, int] = {n: i for i, n in enumerate(self.nodes)}
        index = self.index
        nadj: Adjacency = [{} for _ in self.nodes]
        for u, v, data in graph.edges(data=True):
            if u == v:
                continue  # a self-loop never lies on a simple path
            c = _edge_cost(u, v, data, weight)
            iu, iv = index[u], index[v]
            nadj[iu][iv] = c
            nadj[iv][iu] = c
        self.nadj = nadj
        self.total_cost = sum(sum(nbrs.values()) for nbrs in nadj) / 2.0
        if not self.split:
            self.adj = self.radj = nadj
        else:
            adj: Adjacency = []
            for i, nbrs in enumerate(nadj):
                adj.append({2 * i + 1: 0.0})
                adj.append({2 * j: c for j, c in nbrs.items()})
            radj: Adjacency = [{} for _ in adj]
            for u, arcs in enumerate(adj):
                for v, c in arcs.items():
                    radj[v][u] = c
            self.adj = adj
            self.radj = radj

    def vertex(self, node: Node, *, role: str) -> int:
        """Residual vertex of ``node`` as a path source (``role='out'``) or sink (``'in'``)."""
        try:
            i = self.index[node]
        except (KeyError, TypeError):
            raise PathError(f"node {node!r} is not in the graph") from None
        if not self.split:
            return i
        return 2 * i + 1 if role == "out" else 2 * i

    def to_nodes(self, vertices: Iterable[int]) -> list[Node]:
        """Map a residual vertex path back to graph nodes (collapsing split in/out pairs)."""
        out: list[Node] = []
        last = -1
        for v in vertices:
            i = v >> 1 if self.split else v
            if i != last:
                out.append(self.nodes[i])
                last = i
        return out

    def cost(self, path: Sequence[Node]) -> float:
        index, nadj = self.index, self.nadj
        return sum(nadj[index[a]][index[b]] for a, b in itertools.pairwise(path))


def dijkstra(
    adj: Adjacency, pi: Sequence[float], source: int, target: int = -1
) -> tuple[list[float], list[int]]:
    """Dijkstra on reduced costs ``c(u,v) + pi[u] - pi[v]`` (must be >= 0), stopping at target.

    Returns (dist, pred). For settled vertices ``dist`` is the exact reduced distance; for
    the others it is a tentative upper bound that is >= dist[target] (the caller relies on
    that when it caps potentials at the target distance).
    """
    n = len(adj)
    dist = [INF] * n
    pred = [-1] * n
    done = bytearray(n)
    dist[source] = 0.0
    heap: list[tuple[float, int]] = [(0.0, source)]
    pop, push = heappop, heappush
    while heap:
        d, u = pop(heap)
        if done[u]:
            continue
        done[u] = 1
        if u == target:
            break
        base = d + pi[u]
        for v, c in adj[u].items():
            nd = base + c - pi[v]
            # done[] guards against float round-off making a settled vertex look improvable,
            # which could otherwise create a cycle in pred.
            if nd < dist[v] and not done[v]:
                dist[v] = nd
                pred[v] = u
                push(heap, (nd, v))
    return dist, pred


def tree_path(pred: Sequence[int], source: int, target: int) -> list[int]:
    path = [target]
    v = target
    while v != source:
        v = pred[v]
        path.append(v)
    path.reverse()
    return path


class FlowResult:
    """Outcome of :func:`successive_shortest_paths` in residual-vertex terms."""

    __slots__ = ("augmenting", "cancelled_first", "flow")

    def __init__(self) -> None:
        self.augmenting: list[list[int]] = []  # augmenting path of each iteration
        self.flow: set[tuple[int, int]] = set()  # arcs carrying one unit of flow
        # Whether the 2nd augmentation cancelled flow on the 1st path, i.e. the cheapest path
        # is NOT part of the min-cost disjoint pair (the Suurballe "trap").
        self.cancelled_first = False


def _augment(
    adj: Adjacency,
    radj: Adjacency,
    net: Network,
    flow: set[tuple[int, int]],
    path: list[int],
) -> bool:
    """Push one unit along ``path`` in the residual ``adj`` and its mirror ``radj``.

    ``radj[v][u]`` is always the cost of residual arc ``(u, v)``. Both are copy-on-write
    over the network's base lists: only the dicts of vertices on augmenting paths are copied.
    Returns True if the path cancelled flow (traversed a reversed arc).
    """
    base, rbase = net.adj, net.radj
    cancelled = False
    for a, b in itertools.pairwise(path):
        for x in (a, b):
            if adj[x] is base[x]:
                adj[x] = dict(base[x])
            if radj[x] is rbase[x]:
                radj[x] = dict(rbase[x])
        if (b, a) in flow:
            # Traversing a reversed arc cancels flow: restore both directions as built.
            flow.discard((b, a))
            cancelled = True
            back = base[b][a]
            adj[b][a] = back
            radj[a][b] = back
            orig = base[a].get(b)
            if orig is None:
                del adj[a][b]
                del radj[b][a]
            else:
                adj[a][b] = orig
                radj[b][a] = orig
        else:
            flow.add((a, b))
            c = adj[a].pop(b)
            del radj[b][a]
            # Undirected edge: the reverse direction now means "cancel", at cost -c.
            adj[b][a] = -c
            radj[a][b] = -c
    return cancelled


def backward_round(
    radj: Adjacency,
    pi: list[float],
    s: int,
    t: int,
    free: bytearray | None = None,
) -> tuple[list[int], int] | None:
    """One successive-shortest-paths round, searched backwards from ``t`` towards ``s``.

    Dijkstra from ``t`` over the reversed residual (``radj``) on reduced costs
    ``c(u,v) + pi[u] - pi[v]`` (>= 0). It stops at the first settled vertex ``v`` that is
    ``s`` or marked in ``free``: a vertex the caller knows ``s`` reaches at reduced cost 0
    (over tight tree arcs no flow uses, see :func:`successive_shortest_paths`), so no s-t
    path is cheaper than that one. Returns (the augmenting path from ``v`` to ``t``, ``v``),
    or None, and updates ``pi`` in place to ``pi + D - min(b, D)``, where ``b`` is the
    reduced distance to ``t`` and ``D = b[v]``: a max of feasible potentials, so reduced
    costs stay >= 0, and tight along the path, so its reversed arcs cost 0; vertices the
    search did not settle keep their potential.

    Why backwards: ``pi`` starts as the distance from ``s``, so seen from ``t`` it is an A*
    heuristic towards ``s`` (Hart, Nilsson and Raphael 1968; Ahuja, Magnanti and Orlin 1993,
    ch. 9.7 for potentials in successive shortest paths). The search settles only vertices
    ``v`` with ``d_res(v, t) + d(s, v) < d_res(s, t)``, an ellipse around ``s`` and ``t``,
    where a forward search on the same reduced costs settles everything within the detour
    length, which on a mesh is nearly every vertex. ``O(E log V)`` worst case.
    """
    n = len(radj)
    dist = [INF] * n
    succ = [-1] * n
    done = bytearray(n)
    dist[t] = 0.0
    heap: list[tuple[float, int]] = [(0.0, t)]
    settled: list[int] = []
    pop, push = heappop, heappush
    stop = -1
    while heap:
        d, v = pop(heap)
        if done[v]:
            continue
        done[v] = 1
        settled.append(v)
        if v == s or (free is not None and free[v]):
            stop = v
            break
        base = d - pi[v]
        for u, c in radj[v].items():
            nd = base + c + pi[u]
            # done[] guards against float round-off making a settled vertex look improvable.
            if nd < dist[u] and not done[u]:
                dist[u] = nd
                succ[u] = v
                push(heap, (nd, u))
    if stop < 0:
        return None
    big_d = dist[stop]
    for v in settled:
        pi[v] += big_d - dist[v]
    path = [stop]
    v = stop
    while v != t:
        v = succ[v]
        path.append(v)
    return path, stop


def successive_shortest_paths(
    net: Network,
    s: int,
    t: int,
    k: int,
    tree: SourceTree | None = None,
) -> FlowResult:
    """Up to k augmentations of one unit from s to t on ``net.adj``, each of minimum cost.

    Round 1 is a forward Dijkstra from ``s``. ``tree`` may carry a full one, shared by
    every target of one source; without it the search stops at ``t`` and potentials are
    capped at the target distance (``pi = min(dist, dist[t])``). Rounds 2..k are
    :func:`backward_round` on the residual network.

    With a tree, vertices in the subtrees under the source's children that no augmenting
    path has entered yet (``free``) still reach ``s`` over tight, unused tree arcs whose
    potentials no round changed (a round only changes the vertices it settles, and it stops
    at the first free one), i.e. at reduced cost exactly 0. A backward round may stop there:
    its path is the tree path to that vertex plus the searched part, and that subtree stops
    being free. On meshes whose tree splits into several subtrees this keeps each round
    inside the subtrees the flow already uses (Suurballe and Tarjan 1984 use the same
    subtree structure for their all-destinations pair algorithm).
    """
    if tree is None:
        dist, pred = dijkstra(net.adj, [0.0] * len(net.adj), s, t)
        big_d = dist[t]
        pi = [d if d < big_d else big_d for d in dist]
    else:
        dist, pred = tree.dist, tree.pred
        big_d = dist[t]
        pi = list(dist)
    res = FlowResult()
    if big_d == INF:
        return res
    adj, radj = list(net.adj), list(net.radj)
    flow = res.flow
    free: bytearray | None = None
    if tree is not None:
        free = bytearray(tree.reached)
        for v in tree.members[tree.group[t]]:
            free[v] = 0
    path = tree_path(pred, s, t)
    for it in range(k):
        if it > 0:
            found = backward_round(radj, pi, s, t, free)
            if found is None:
                break
            path, stop = found
            if stop != s:
                assert tree is not None and free is not None
                path = tree_path(pred, s, stop) + path[1:]
                for v in tree.members[tree.group[stop]]:
                    free[v] = 0
        if _augment(adj, radj, net, flow, path) and it == 1:
            res.cancelled_first = True
        res.augmenting.append(path)
    return res


class SourceTree:
    """Shortest-path tree from one source, shared by every destination of one update.

    ``dist``/``pred`` are the first successive-shortest-paths round for all targets at
    once (one full Dijkstra, ``O(E log V)``); ``dist`` is also the potential that makes every
    later round a goal-directed backward search (:func:`backward_round`). ``group[v]`` is
    the child of the source whose subtree holds ``v`` (-1 for the source and unreachable
    vertices), ``members[g]`` lists subtree ``g`` and ``reached`` marks every grouped vertex.
    """

    __slots__ = ("dist", "group", "members", "pred", "reached", "source")

    def __init__(self, net: Network, source: int):
        self.source = source
        self.dist, self.pred = dist, pred = dijkstra(net.adj, [0.0] * len(net.adj), source)
        n = len(dist)
        group = [-1] * n
        for v in range(n):
            if v == source or dist[v] == INF or group[v] != -1:
                continue
            chain = []
            x = v
            while group[x] == -1 and pred[x] != source:
                chain.append(x)
                x = pred[x]
            g = x if group[x] == -1 else group[x]
            group[x] = g
            for y in chain:
                group[y] = g
        members: dict[int, list[int]] = {}
        reached = bytearray(n)
        for v, g in enumerate(group):
            if g != -1:
                members.setdefault(g, []).append(v)
                reached[v] = 1
        self.group = group
        self.members = members
        self.reached = reached


def tree_successive_paths(net: Network, tree: SourceTree, t: int, k: int) -> FlowResult:
    """:func:`successive_shortest_paths` from ``tree.source`` to ``t`` reusing the tree."""
    return successive_shortest_paths(net, tree.source, t, k, tree)


def decompose(net: Network, flow: set[tuple[int, int]], s: int, t: int) -> list[list[Node]]:
    """Split a unit flow into simple s-t node paths, dropping any zero-cost circulation."""
    out: dict[int, list[int]] = {}
    for a, b in flow:
        out.setdefault(a, []).append(b)
    # Where paths cross (edge mode) several pairings are valid. Make the choice canonical -
    # independent of set order and vertex numbering - so equal flows give equal paths: take
    # the cheapest arc first, ties by node name.
    base, nodes, split = net.adj, net.nodes, net.split
    for a, succ in out.items():
        if len(succ) > 1:
            arcs = base[a]

            def key(b: int, arcs: dict[int, float] = arcs) -> tuple[float, str]:
                return -arcs[b], str(nodes[b >> 1 if split else b])

            succ.sort(key=key)
    paths: list[list[Node]] = []
    while out.get(s):
        walk = [s]
        pos = {s: 0}
        v = s
        while v != t:
            nxt = out[v].pop()
            if nxt in pos:  # closed a cycle: cut it out of the walk
                cut = pos[nxt]
                for x in walk[cut + 1 :]:
                    del pos[x]
                del walk[cut + 1 :]
            else:
                pos[nxt] = len(walk)
                walk.append(nxt)
            v = nxt
        paths.append(net.to_nodes(walk))
    return paths


def path_cost(graph: nx.Graph, path: Sequence[Node], weight: str | None = "cost") -> float:
    """Sum of edge costs along ``path`` (missing attribute = 1)."""
    total = 0.0
    for a, b in itertools.pairwise(path):
        total += _edge_cost(a, b, graph.edges[a, b], weight)
    return total


def check_query(graph: nx.Graph, source: Node, target: Node, k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise PathError(f"k must be an integer >= 1, not {k!r}")
    for node in (source, target):
        try:
            present = node in graph
        except TypeError:
            present = False
        if not present:
            raise PathError(f"node {node!r} is not in the graph")
    if source == target:
        raise PathError(f"source and target are the same node {source!r}")


def k_disjoint_paths(
    graph: nx.Graph,
    source: Node,
    target: Node,
    k: int = 3,
    *,
    disjoint: str = "edge",
    weight: str | None = "cost",
) -> list[list[Node]]:
    """Return up to ``k`` edge- or node-disjoint source-target paths of minimum total cost.

    Successive shortest paths on the residual network (Suurballe 1974, "Disjoint paths in a
    network"; Bhandari 1999, "Survivable Networks", ch. 4): each undirected edge is a pair of
    arcs, and once a path uses an arc the reverse arc costs ``-c`` so that a later path can
    cancel it. Node-disjointness splits every node into an in/out pair joined by a unit arc.
    Each round is one Dijkstra on reduced costs with Johnson potentials, so the whole call is
    ``O(k * E log V)``; rounds after the first search backwards from the target, which the
    potentials make goal-directed (:func:`backward_round`). Flow value ``f`` after round ``f``
    is a minimum-cost set of ``f`` disjoint paths, so the result has ``min(k, max-flow)``
    paths of least total cost. Unlike
    ``networkx.edge_disjoint_paths`` (max-flow, cost-blind), this minimises total cost.

    Paths are node lists, cheapest first; ``[]`` if target is unreachable. A missing
    ``weight`` attribute counts as cost 1; ``weight=None`` makes every edge cost 1.

    >>> g = nx.Graph()
    >>> g.add_weighted_edges_from([("s", "a", 1), ("a", "b", 1), ("b", "t", 1),
    ...     ("s", "x", 2), ("x", "b", 2), ("a", "y", 2), ("y", "t", 3)], weight="cost")
    >>> k_disjoint_paths(g, "s", "t", k=2)   # the shortest path s-a-b-t is in neither
    [['s', 'x', 'b', 't'], ['s', 'a', 'y', 't']]

    Raises :class:`PathError` (a ``ValueError``) for unknown nodes, negative or non-numeric
    costs, ``source == target``, ``k < 1`` or ``disjoint`` not in {"edge", "node"}.
    """
    check_query(graph, source, target, k)
    net = Network(graph, weight, disjoint)
    s = net.vertex(source, role="out")
    t = net.vertex(target, role="in")
    res = successive_shortest_paths(net, s, t, k)
    paths = decompose(net, res.flow, s, t)
    paths.sort(key=lambda p: (net.cost(p), str(p)))
    return paths
