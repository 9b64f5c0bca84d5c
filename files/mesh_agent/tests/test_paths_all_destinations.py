"""One-to-all planning (PathTable) against the brute-force oracle, and RFC 5286 LFA flags."""

from __future__ import annotations

import itertools
import math
import random

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshcore_testkit.oracle import brute_force_disjoint

from mesh_agent.paths import PathTable, RouteChoice, k_disjoint_paths, path_cost
from mesh_agent.paths.disjoint import Network, successive_shortest_paths


def total(g: nx.Graph, paths: list[list[int]]) -> float:
    return sum(path_cost(g, p) for p in paths)


def check_against_oracle(g: nx.Graph, src: int, mode: str) -> None:
    """Every destination of a fresh table: optimal k paths, optimal backup, correct flags."""
    table = PathTable(src, k=3, disjoint=mode)  # type: ignore[arg-type]
    table.update(g)
    reachable = nx.node_connected_component(g, src) - {src}
    assert set(table.choices()) == reachable
    dist = dict(nx.all_pairs_dijkstra_path_length(g, weight="cost"))
    for dst in reachable:
        ch = table.get(dst)
        assert ch is not None
        assert ch.cost == pytest.approx(dist[src][dst])
        # One-to-all and the per-pair API give the same number of paths and the same total,
        # and both equal the exhaustive optimum.
        count, best = brute_force_disjoint(g, src, dst, 3, disjoint=mode)
        per_pair = k_disjoint_paths(g, src, dst, 3, disjoint=mode)
        assert len(ch.disjoint) == len(per_pair) == count
        assert total(g, ch.disjoint) == pytest.approx(best, abs=1e-9)
        assert total(g, per_pair) == pytest.approx(best, abs=1e-9)
        # Backup: fewest links shared with the primary, then cheapest, over all simple paths.
        plinks = {frozenset(e) for e in itertools.pairwise(ch.primary)}

        def key(p: list[int], plinks: set[frozenset[int]] = plinks) -> tuple[int, float]:
            return len(plinks & {frozenset(e) for e in itertools.pairwise(p)}), path_cost(g, p)

        # The planned backup is the disjoint one (before the LFA preference).
        planned = table._planned[dst]
        others = [p for p in nx.all_simple_paths(g, src, dst) if p != ch.primary]
        if not others:
            assert planned.backup is None
        else:
            assert planned.backup is not None
            want = min(map(key, others))
            got = key(planned.backup)
            assert got[0] == want[0]
            assert got[1] == pytest.approx(want[1], abs=1e-9)
        check_flags(ch, src, dist)
        check_lfa_preference(g, ch, planned, src, dist)


def check_flags(ch: RouteChoice, src: object, dist: dict[object, dict[object, float]]) -> None:
    nh, dst, e = ch.backup_next_hop, ch.destination, ch.primary_next_hop
    if nh is None:
        assert ch.backup_loop_free is None and ch.backup_node_protecting is None
        return
    tol = 1e-9
    assert ch.backup_loop_free == (dist[nh][dst] < dist[nh][src] + dist[src][dst] - tol)
    assert ch.backup_node_protecting == (dist[nh][dst] < dist[nh][e] + dist[e][dst] - tol)


def check_lfa_preference(
    g: nx.Graph,
    ch: RouteChoice,
    planned: RouteChoice,
    src: object,
    dist: dict[object, dict[object, float]],
) -> None:
    """The backup is the disjoint one unless its next hop loops and another neighbour does
    not: then the best loop-free alternate, node-protecting first, then the cheapest."""
    dst, e, tol = ch.destination, ch.primary_next_hop, 1e-9

    def lfa(n: object) -> bool:
        return dist[n][dst] < dist[n][src] + dist[src][dst] - tol

    def pref(n: object) -> tuple[bool, float]:
        protecting = dist[n][dst] < dist[n][e] + dist[e][dst] - tol
        return (not protecting, g.edges[src, n]["cost"] + dist[n][dst])

    alternates = [n for n in g.neighbors(src) if n != e and lfa(n)]
    planned_nh = planned.backup_next_hop
    if (planned_nh is not None and lfa(planned_nh)) or not alternates:
        assert ch.backup_rule == ("disjoint" if planned.backup is not None else None)
        assert ch.backup == planned.backup and ch.backup_next_hop == planned_nh
        return
    assert ch.backup_rule == "lfa"
    assert ch.backup is not None and ch.backup_next_hop in alternates
    assert ch.backup_loop_free is True
    want = min(map(pref, alternates))
    got = pref(ch.backup_next_hop)
    assert got[0] == want[0] and got[1] == pytest.approx(want[1], abs=1e-9)
    # The backup is what packets will follow: this node, then the alternate's shortest path.
    assert ch.backup[1] == ch.backup_next_hop and ch.backup[-1] == dst
    assert src not in ch.backup[1:]
    assert path_cost(g, ch.backup) == pytest.approx(got[1], abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(3, 7),
    edges=st.sets(st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 9)), max_size=16),
    mode=st.sampled_from(["edge", "node"]),
)
def test_property_table_matches_oracle(n: int, edges: set[tuple[int, int, int]], mode: str) -> None:
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_weighted_edges_from(
        ((u, v, c) for u, v, c in edges if u < n and v < n and u != v), weight="cost"
    )
    check_against_oracle(g, 0, mode)


@pytest.mark.parametrize("mode", ["edge", "node"])
@pytest.mark.parametrize("seed", range(12))
def test_random_geometric_table_matches_oracle(mode: str, seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(7, 10)
    r = math.sqrt(5.0 / (math.pi * n))
    g = nx.random_geometric_graph(n, r, seed=seed)
    for u, v in g.edges:
        g.edges[u, v]["cost"] = round(1 + 10 * math.dist(g.nodes[u]["pos"], g.nodes[v]["pos"]), 3)
    check_against_oracle(g, 0, mode)


@pytest.mark.parametrize("mode", ["edge", "node"])
@pytest.mark.parametrize("seed", range(10))
def test_every_round_leaves_a_min_cost_flow(mode: str, seed: int) -> None:
    """What the backward rounds must preserve: no negative cycle in the residual network."""
    rng = random.Random(seed)
    g = nx.gnp_random_graph(9, 0.45, seed=seed)
    for u, v in g.edges:
        g.edges[u, v]["cost"] = rng.choice([0, 1, 2, 3, 7])
    if not nx.has_path(g, 0, 8):
        return
    net = Network(g, "cost", mode)
    s, t = net.vertex(0, role="out"), net.vertex(8, role="in")
    for k in range(1, 5):
        res = successive_shortest_paths(net, s, t, k)
        # Rebuild the residual network for this flow and find feasible potentials by
        # Bellman-Ford: a negative cycle would mean the flow is not min-cost.
        h = nx.DiGraph()
        for u, arcs in enumerate(net.adj):
            for v, c in arcs.items():
                if (u, v) in res.flow:
                    h.add_edge(v, u, cost=-c)
                elif (v, u) not in res.flow:
                    h.add_edge(u, v, cost=c)
        assert not nx.negative_edge_cycle(h, weight="cost")
        count, best = brute_force_disjoint(g, 0, 8, k, disjoint=mode)
        assert len(res.augmenting) == count
        cost = sum(net.adj[a][b] for a, b in res.flow)
        assert cost == pytest.approx(best, abs=1e-9)


def loop_topology() -> nx.Graph:
    """S's only alternate N reaches D back through S: a backup next hop that is NOT an LFA."""
    g = nx.Graph()
    g.add_weighted_edges_from(
        [("S", "E", 1), ("E", "D", 1), ("S", "N", 1), ("N", "X", 10), ("X", "D", 10)],
        weight="cost",
    )
    return g


def test_backup_next_hop_that_loops_is_flagged() -> None:
    table = PathTable("S", k=2)
    table.update(loop_topology())
    ch = table.get("D")
    assert ch is not None
    assert ch.primary == ["S", "E", "D"] and ch.backup == ["S", "N", "X", "D"]
    assert ch.backup_next_hop == "N"
    # dist(N, D) = 3 via S, not < dist(N, S) + dist(S, D) = 1 + 2.
    assert ch.backup_loop_free is False
    assert ch.backup_node_protecting is False
    assert table.coverage()["backup_next_hops_loop_free"] < 1.0


def test_loop_free_link_protecting_and_node_protecting() -> None:
    g = loop_topology()
    g.add_edge("N", "E", cost=1)  # N now reaches D via E without S: loop-free, not node-safe
    table = PathTable("S", k=2)
    table.update(g)
    ch = table.get("D")
    assert ch is not None and ch.backup_next_hop == "N"
    assert ch.backup_loop_free is True
    assert ch.backup_node_protecting is False
    # N-X-D = 1.2 beats N-E-D = 2, so N's own path avoids E too (S-N-X-D = 2.2 stays backup).
    g.edges["N", "X"]["cost"] = 0.6
    g.edges["X", "D"]["cost"] = 0.6
    table.update(g)
    ch = table.get("D")
    assert ch is not None and ch.backup_next_hop == "N"
    assert ch.backup_loop_free is True
    assert ch.backup_node_protecting is True


def test_a_loop_free_alternate_is_preferred_to_a_disjoint_backup_that_loops() -> None:
    """S-N-X-D shares no link with the primary S-E-D but N's own way to D is back through S:
    after a failover packets sent to N would loop until N reconverges. M reaches D through E
    without S (loop-free, not node-protecting), so M is the backup next hop and the backup is
    what packets will follow, S then M's shortest path."""
    g = loop_topology()
    g.add_edge("S", "M", cost=1)
    g.add_edge("M", "E", cost=1)
    table = PathTable("S", k=2)
    table.update(g)
    ch = table.get("D")
    assert ch is not None
    assert table._planned["D"].backup == ["S", "N", "X", "D"]
    assert ch.backup == ["S", "M", "E", "D"] and ch.backup_next_hop == "M"
    assert ch.backup_rule == "lfa"
    assert ch.backup_loop_free is True and ch.backup_node_protecting is False
    assert table.failover("E")["D"] == "M"
    # Raised so that M's way to D runs through S: no alternate is loop-free any more, and
    # the disjoint backup comes back (it still helps once N has reconverged).
    g.edges["M", "E"]["cost"] = 5
    assert "D" in table.update(g)
    ch = table.get("D")
    assert ch is not None and ch.backup == ["S", "N", "X", "D"] and ch.backup_rule == "disjoint"
    assert ch.backup_loop_free is False
    fresh = PathTable("S", k=2)
    fresh.update(g)
    assert table.choices() == fresh.choices()


def test_flags_follow_distance_changes_on_incremental_update() -> None:
    g = loop_topology()
    g.add_edge("N", "E", cost=1)
    table = PathTable("S", k=2)
    table.update(g)
    assert table.get("D").backup_loop_free is True  # type: ignore[union-attr]
    g.edges["N", "E"]["cost"] = 5  # raised cost: paths are kept, N's distance to D is not
    changed = table.update(g)
    assert "D" in changed
    assert table.get("D").backup_loop_free is False  # type: ignore[union-attr]
    fresh = PathTable("S", k=2)
    fresh.update(g)
    assert table.choices() == fresh.choices()
