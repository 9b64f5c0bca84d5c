"""Small hand-made graphs that several path tests reason about by hand."""

from __future__ import annotations

import networkx as nx

__all__ = ["tree_like"]


def tree_like() -> nx.Graph:
    """Two cycles joined by the bridge c-d, plus a pendant leaf e off d (edge attribute ``cost``).

    s-a-c / s-b-c is the first cycle (costs 2 and 4), d-f-t / d-g-t the second
    (2 and 6): every s-t path crosses the bridge, so no two are edge-disjoint.
    """
    g = nx.Graph()
    g.add_weighted_edges_from(
        [
            ("s", "a", 1),
            ("a", "c", 1),
            ("s", "b", 2),
            ("b", "c", 2),
            ("c", "d", 1),
            ("d", "f", 1),
            ("f", "t", 1),
            ("d", "g", 3),
            ("g", "t", 3),
            ("d", "e", 1),
        ],
        weight="cost",
    )
    return g
