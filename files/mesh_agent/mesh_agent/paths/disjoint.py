"""Minimum-cost k edge- or node-disjoint paths (Suurballe 1974, Bhandari 1999).

The residual network is kept on integer vertex ids so that the inner Dijkstra loop touches
only lists and small dicts; :class:`Network` is built once per graph and shared by every
destination (see :mod:`mesh_agent.paths.table`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Iterable, Sequence
from heapq import heapify, heappop, heappush
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
    Both are never mutated after construction; solvers copy the dicts they change.
    """

    __slots__ = ("adj", "index", "nadj", "nodes", "split", "weight")

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
        if not self.split:
            self.adj = nadj
        else:
            adj: Adjacency = []
            for i, nbrs in enumerate(nadj):
                adj.append({2 * i + 1: 0.0})
                adj.append({2 * j: c for j, c in nbrs.items()})
            self.adj = adj

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


def successive_shortest_paths(
    net: Network,
    s: int,
    t: int,
    k: int,
    first: tuple[list[float], list[int]] | None = None,
) -> FlowResult:
    """Up to k augmentations of one unit from s to t on ``net.adj``, each of minimum cost.

    ``first`` may carry a full Dijkstra (dist, pred) from s on the base network, shared by all
    targets of one source. Potentials are capped at the target distance after each round
    (``pi += min(dist, dist[t])``), which keeps reduced costs non-negative while letting every
    Dijkstra stop as soon as t is settled.
    """
    base = net.adj
    adj = list(base)  # copy-on-write per vertex: only the dicts on augmenting paths are copied
    res = FlowResult()
    flow = res.flow
    n = len(adj)
    pi: list[float] = [0.0] * n
    for it in range(k):
        if it == 0 and first is not None:
            dist, pred = first
        else:
            dist, pred = dijkstra(adj, pi, s, t)
        big_d = dist[t]
        if big_d == INF:
            break
        path = tree_path(pred, s, t)
        for a, b in itertools.pairwise(path):
            if adj[a] is base[a]:
                adj[a] = dict(base[a])
            if adj[b] is base[b]:
                adj[b] = dict(base[b])
            if (b, a) in flow:
                # Traversing a reversed arc cancels flow: restore both directions as built.
                flow.discard((b, a))
                if it == 1:
                    res.cancelled_first = True
                adj[b][a] = base[b][a]
                orig = base[a].get(b)
                if orig is None:
                    del adj[a][b]
                else:
                    adj[a][b] = orig
            else:
                flow.add((a, b))
                c = adj[a].pop(b)
                # Undirected edge: the reverse direction now means "cancel", at cost -c.
                adj[b][a] = -c
        res.augmenting.append(path)
        if it + 1 < k:
            pi = [p + (d if d < big_d else big_d) for p, d in zip(pi, dist, strict=True)]
    return res


class SourceTree:
    """Shortest-path tree from one source, split into the subtrees under its children.

    Built once per topology and shared by every destination of :func:`tree_successive_paths`:
    ``dist``/``pred`` are the first Suurballe round for all targets at once, ``group[v]`` is
    the child of the source whose subtree holds ``v`` (-1 for the source and unreachable
    vertices), and ``entries[g]`` lists the arcs ``(u, w, reduced cost)`` entering subtree
    ``g`` from outside it.
    """

    __slots__ = ("dist", "entries", "group", "members", "pred", "source")

    def __init__(self, net: Network, source: int):
        adj = net.adj
        n = len(adj)
        self.source = source
        self.dist, self.pred = dist, pred = dijkstra(adj, [0.0] * n, source)
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
        self.group = group
        members: dict[int, list[int]] = {}
        entries: dict[int, list[tuple[int, int, float]]] = {}
        for v, g in enumerate(group):
            if g != -1:
                members.setdefault(g, []).append(v)
                entries.setdefault(g, [])
        for u, nbrs in enumerate(adj):
            du = dist[u]
            if du == INF:
                continue
            gu = group[u]
            for w, c in nbrs.items():
                gw = group[w]
                if gw != -1 and gw != gu:
                    entries[gw].append((u, w, c + du - dist[w]))
        self.members = members
        self.entries = entries


def _augment(adj: Adjacency, base: Adjacency, flow: set[tuple[int, int]], path: list[int]) -> bool:
    """Push one unit along ``path`` in the residual ``adj``; True if it cancelled any flow."""
    cancelled = False
    for a, b in itertools.pairwise(path):
        if adj[a] is base[a]:
            adj[a] = dict(base[a])
        if adj[b] is base[b]:
            adj[b] = dict(base[b])
        if (b, a) in flow:
            # Traversing a reversed arc cancels flow: restore both directions as built.
            flow.discard((b, a))
            cancelled = True
            adj[b][a] = base[b][a]
            orig = base[a].get(b)
            if orig is None:
                del adj[a][b]
            else:
                adj[a][b] = orig
        else:
            flow.add((a, b))
            c = adj[a].pop(b)
            # Undirected edge: the reverse direction now means "cancel", at cost -c.
            adj[b][a] = -c
    return cancelled


def tree_successive_paths(net: Network, tree: SourceTree, t: int, k: int) -> FlowResult:
    """:func:`successive_shortest_paths` from ``tree.source`` to ``t``, searching little.

    Invariant (potentials ``pi = dist + extra``, ``extra`` zero outside the region): every
    vertex outside the *region* - the union of the source subtrees that the augmenting paths
    so far left the source through - still reaches the source over unblocked tight tree arcs,
    so its reduced distance is exactly 0. Each round is then a multi-source Dijkstra over
    the region only, seeded by the arcs entering it, and stops at ``t``. Same result and
    bound as the plain rounds, but a round touches one or a few subtrees, not the graph.
    """
    base = net.adj
    adj = list(base)
    n = len(adj)
    s = tree.source
    tpred = tree.pred
    group, members, entries = tree.group, tree.members, tree.entries
    res = FlowResult()
    flow = res.flow
    res.augmenting.append(tree_path(tpred, s, t))
    _augment(adj, base, flow, res.augmenting[0])
    pi = list(tree.dist)
    regions = [group[t]]
    mask = bytearray(n)
    for v in members[group[t]]:
        mask[v] = 1
    pop, push = heappop, heappush
    for it in range(1, k):
        dist = [INF] * n
        pred = [-1] * n
        done = bytearray(n)
        for g in regions:
            for u, w, r in entries[g]:
                if mask[u] or (u == s and (s, w) in flow):
                    continue
                nd = r - (pi[w] - tree.dist[w])
                if nd < dist[w]:
                    dist[w] = nd
                    pred[w] = u
        heap = [(d, v) for v, d in enumerate(dist) if d < INF]
        heapify(heap)
        while heap:
            d, u = pop(heap)
            if done[u]:
                continue
            done[u] = 1
            if u == t:
                break
            base_u = d + pi[u]
            for v, c in adj[u].items():
                if not mask[v]:
                    continue
                nd = base_u + c - pi[v]
                if nd < dist[v] and not done[v]:
                    dist[v] = nd
                    pred[v] = u
                    push(heap, (nd, v))
        if not done[t]:
            break
        tail = [t]
        while mask[tail[-1]]:
            tail.append(pred[tail[-1]])
        entry = tail[-1]
        tail.reverse()
        path = tree_path(tpred, s, entry) + tail[1:]
        if _augment(adj, base, flow, path) and it == 1:
            res.cancelled_first = True
        res.augmenting.append(path)
        if it + 1 < k:
            big_d = dist[t]
            for g in regions:
                for v in members[g]:
                    d = dist[v]
                    pi[v] += d if d < big_d else big_d
            if entry != s and group[entry] not in regions:
                regions.append(group[entry])
                for v in members[group[entry]]:
                    mask[v] = 1
    return res


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
    ``O(k * E log V)``. Flow value ``f`` after round ``f`` is a minimum-cost set of ``f``
    disjoint paths, so the result has ``min(k, max-flow)`` paths of least total cost. Unlike
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
