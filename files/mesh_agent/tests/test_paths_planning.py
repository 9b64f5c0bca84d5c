"""Planning report: suggested links really 2-edge-connect the mesh."""

from __future__ import annotations

import math

import networkx as nx
import pytest

from mesh_agent.paths import augmentation_plan, protection_summary


def with_links(g: nx.Graph, plan: list[dict[str, object]]) -> nx.Graph:
    h = g.copy()
    h.add_edges_from((s["u"], s["v"]) for s in plan)
    return h


def test_plan_two_edge_connects_a_tree() -> None:
    g = nx.balanced_tree(2, 3)  # 15 nodes, every link a bridge
    summary = protection_summary(g)
    assert summary["bridges"] == 14 and summary["bridge_fraction"] == 1.0
    assert summary["pairs_two_edge_connected"] == 0.0
    plan = augmentation_plan(g)
    assert plan and all(s["cost"] == 1.0 for s in plan)
    assert nx.is_k_edge_connected(with_links(g, plan), 2)
    assert [s["pairs_protected"] for s in plan] == sorted(
        (s["pairs_protected"] for s in plan), reverse=True
    )
    # One link between two leaves closes a cycle through the path between them.
    first = plan[0]
    cycle = nx.shortest_path_length(g, first["u"], first["v"]) + 1
    assert first["pairs_protected"] == cycle * (cycle - 1) // 2


def test_plan_uses_positions_and_max_links() -> None:
    g = nx.random_geometric_graph(60, 0.16, seed=4)
    g = g.subgraph(max(nx.connected_components(g), key=len)).copy()
    for u, v in g.edges:
        g.edges[u, v]["cost"] = 2 * math.dist(g.nodes[u]["pos"], g.nodes[v]["pos"])
    before = protection_summary(g)
    assert before["bridges"] > 0
    plan = augmentation_plan(g)
    assert nx.is_k_edge_connected(with_links(g, plan), 2)
    longest = max(math.dist(g.nodes[u]["pos"], g.nodes[v]["pos"]) for u, v in g.edges)
    for s in plan:
        d = math.dist(g.nodes[s["u"]]["pos"], g.nodes[s["v"]]["pos"])
        assert d <= 1.5 * longest + 1e-12
        assert s["cost"] == pytest.approx(2 * d)  # expressed in existing cost-per-length units
        assert not g.has_edge(s["u"], s["v"])
    assert protection_summary(with_links(g, plan))["pairs_two_edge_connected"] == 1.0
    assert augmentation_plan(g, max_links=1) == plan[:1]


def test_already_two_edge_connected_needs_nothing() -> None:
    g = nx.cycle_graph(6)
    assert augmentation_plan(g) == []
    assert protection_summary(g) == {
        "nodes": 6.0,
        "links": 6.0,
        "pairs_two_edge_connected": 1.0,
        "bridges": 0.0,
        "bridge_fraction": 0.0,
    }
