"""Cumulative link failures: links cut one after another, none restored (no I/O here).

The issue's target: 50 random link failures on the 50-node lab, and 100 % of the pairs
the remaining links still connect are rerouted (the seeds claim 98 %). After each cut
the mesh is given a bounded time to reconverge, then every ordered pair still
connected in the graph is walked hop by hop through the kernels' routes
(:func:`meshcore_tools.chaos.routes.picture`): routed, looping or black-holed. The
share per step is ``routed / connected``. ``tests/bench/bench_chaos.py --mode
cumulative`` runs it; this module is the seeded order and the figures.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import networkx as nx

Link = tuple[str, str]


def cut_order(graph: nx.Graph, count: int, seed: int) -> list[Link]:
    """``count`` distinct links of ``graph`` (all of them if it has fewer), in a seeded random
    order: the same graph and seed give the same order, whatever the graph's insertion order."""
    links = sorted(tuple(sorted((str(a), str(b)))) for a, b in graph.edges)
    return [(a, b) for a, b in random.Random(seed).sample(links, min(count, len(links)))]


def usable_after(graph: nx.Graph, cut: Iterable[Link]) -> list[Link]:
    """The links of ``graph`` that none of the ``cut`` links is (either direction)."""
    dead = {frozenset(link) for link in cut}
    return [(a, b) for a, b in graph.edges if frozenset((a, b)) not in dead]


def summary(steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run's figures from its steps (each with ``connected``, ``routed``, ``looping``,
    ``reconverged``): the share at the end, the worst share, the steps at 100 %."""
    if not steps:
        return {"cuts": 0, "final_share": None, "min_share": None, "steps_all_routed": 0,
                "steps_not_reconverged": 0, "looping_max": 0, "connected_pairs_end": None}
    shares = [s["routed"] / s["connected"] if s["connected"] else 1.0 for s in steps]
    return {
        "cuts": len(steps),
        "final_share": round(shares[-1], 4),
        "min_share": round(min(shares), 4),
        "steps_all_routed": sum(1 for x in shares if x == 1.0),
        "steps_not_reconverged": sum(1 for s in steps if not s["reconverged"]),
        "looping_max": max(s["looping"] for s in steps),
        "connected_pairs_end": steps[-1]["connected"],
    }
