"""Brute-force reference for tests and benchmarks (exponential: small graphs only)."""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Sequence

import networkx as nx
from mesh_agent.paths.disjoint import path_cost

__all__ = ["brute_force_disjoint"]


def brute_force_disjoint(
    graph: nx.Graph,
    source: Hashable,
    target: Hashable,
    k: int,
    *,
    disjoint: str = "edge",
    weight: str | None = "cost",
) -> tuple[int, float]:
    """(most disjoint paths up to k, least total cost of that many) by enumerating all paths."""
    paths = list(nx.all_simple_paths(graph, source, target))
    items = []
    for p in paths:
        if disjoint == "edge":
            used = frozenset(frozenset(e) for e in itertools.pairwise(p))
        else:
            used = frozenset(p[1:-1]) | ({frozenset((source, target))} if len(p) == 2 else set())
        items.append((used, path_cost(graph, p, weight)))
    items.sort(key=lambda item: item[1])
    for count in range(min(k, len(items)), 0, -1):
        best = _cheapest_disjoint(items, count)
        if best is not None:
            return count, best
    return 0, 0.0


def _cheapest_disjoint(
    items: Sequence[tuple[frozenset[object], float]], count: int
) -> float | None:
    """Least total cost of ``count`` pairwise disjoint items (sorted by cost), branch and bound."""
    best: list[float | None] = [None]

    def rec(start: int, left: int, used: frozenset[object], total: float) -> None:
        for j in range(start, len(items)):
            cand, cost = items[j]
            bound = best[0]
            if bound is not None and total + cost * left >= bound:
                return  # items are sorted, so every later choice costs at least this much
            if not used.isdisjoint(cand):
                continue
            if left == 1:
                best[0] = total + cost
                return
            rec(j + 1, left - 1, used | cand, total + cost)

    rec(0, count, frozenset(), 0.0)
    return best[0]
