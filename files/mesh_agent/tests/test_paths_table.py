"""PathTable: batch results equal per-pair results, failover, coverage, incremental update."""

from __future__ import annotations

import itertools
import math
import random

import networkx as nx
import pytest
from meshcore_testkit.graphs import tree_like

from mesh_agent.paths import (
    PathError,
    PathTable,
    RouteChoice,
    k_disjoint_paths,
    maximally_disjoint_backup,
    path_cost,
)


def geometric(n: int, seed: int) -> nx.Graph:
    r = math.sqrt(8.0 / (math.pi * n))
    g = nx.random_geometric_graph(n, r, seed=seed)
    for u, v in g.edges:
        g.edges[u, v]["cost"] = 1 + 10 * math.dist(g.nodes[u]["pos"], g.nodes[v]["pos"])
    return nx.relabel_nodes(g, {x: f"n{x}" for x in g})


def total(g: nx.Graph, paths: list[list[str]]) -> float:
    return sum(path_cost(g, p) for p in paths)


@pytest.mark.parametrize("mode", ["edge", "node"])
@pytest.mark.parametrize("seed", range(6))
def test_batch_equals_single_pair_api(mode: str, seed: int) -> None:
    g = geometric(40, seed)
    # Varied degrees (including leaves and bridges) exercise the capped-k and bridge paths.
    rng = random.Random(seed)
    g.remove_edges_from(rng.sample(list(g.edges), len(g.edges) // 4))
    src = "n0"
    table = PathTable(src, k=3, disjoint=mode)
    table.update(g)
    reachable = nx.node_connected_component(g, src) - {src}
    assert set(table.choices()) == reachable
    for dst, ch in table.choices().items():
        assert ch.destination == dst
        assert ch.primary[0] == src and ch.primary[-1] == dst
        assert ch.cost == pytest.approx(nx.shortest_path_length(g, src, dst, weight="cost"))
        assert ch.primary_next_hop == ch.primary[1]
        ref = k_disjoint_paths(g, src, dst, 3, disjoint=mode)
        assert len(ch.disjoint) == len(ref)
        assert total(g, ch.disjoint) == pytest.approx(total(g, ref))
        if ch.primary in ref:
            assert ch.disjoint[0] == ch.primary
        # The planned (disjoint) backup; the LFA preference on top of it is checked against
        # its own oracle in test_paths_all_destinations.
        planned = table._planned[dst]
        ref_backup = maximally_disjoint_backup(g, src, dst, ch.primary)
        if ref_backup is None:
            assert planned.backup is None
        else:
            assert planned.backup is not None

            def shared(p: list[str], ch: RouteChoice = ch) -> int:
                a = {frozenset(e) for e in zip(ch.primary, ch.primary[1:], strict=False)}
                return len(a & {frozenset(e) for e in itertools.pairwise(p)})

            assert shared(planned.backup) == shared(ref_backup)
            assert path_cost(g, planned.backup) == pytest.approx(path_cost(g, ref_backup))
        if planned.backup and planned.backup[1] != ch.primary[1]:
            assert planned.backup_next_hop == planned.backup[1]
        else:
            assert planned.backup_next_hop is None


def test_tree_like_backup_shares_only_bridges_and_coverage() -> None:
    g = tree_like()
    table = PathTable("s", k=2)
    assert table.update(g) == {"a", "b", "c", "d", "e", "f", "g", "t"}
    t = table.get("t")
    assert t is not None
    assert t.primary == ["s", "a", "c", "d", "f", "t"]
    assert t.backup == ["s", "b", "c", "d", "g", "t"]
    assert t.disjoint == [t.primary]
    assert t.protected_links[("c", "d")] is False
    assert sum(t.protected_links.values()) == 4
    e = table.get("e")
    assert e is not None and e.backup == ["s", "b", "c", "d", "e"]
    cov = table.coverage()
    # Every destination has a backup; only a, b, c (inside the first cycle) have 2 disjoint.
    assert cov["destinations_with_backup"] == 1.0
    assert cov["destinations_with_k_disjoint"] == pytest.approx(3 / 8)
    bridged = sum(not ok for ch in table.choices().values() for ok in ch.protected_links.values())
    links = sum(len(ch.protected_links) for ch in table.choices().values())
    assert bridged == 6  # c-d on the primaries to d, e, f, g, t, and d-e on e's
    assert cov["primary_links_protected"] == pytest.approx((links - bridged) / links)
    assert cov["protectable_links_protected"] == 1.0


def test_failover_is_a_lookup_of_backup_next_hops() -> None:
    g = tree_like()
    table = PathTable("s", k=2)
    table.update(g)
    via_a = {d for d, ch in table.choices().items() if ch.primary_next_hop == "a"}
    assert via_a == {"a", "c", "d", "e", "f", "g", "t"}
    fo = table.failover("a")
    assert set(fo) == via_a and set(fo.values()) == {"b"}
    assert table.failover("b") == {"b": "a"}
    assert table.failover("nobody") == {}
    line = nx.path_graph(["s", "x", "y"])
    t2 = PathTable("s")
    t2.update(line)
    assert t2.failover("x") == {}  # a path graph has no backup at all
    assert t2.coverage()["destinations_with_backup"] == 0.0


def test_update_unchanged_graph_recomputes_nothing() -> None:
    g = geometric(30, 3)
    table = PathTable("n0")
    table.update(g)
    before = table.choices()
    assert table.update(g.copy()) == set()
    assert table.last_recomputed == 0
    assert table.choices() == before


@pytest.mark.parametrize("seed", range(8))
def test_incremental_removal_equals_fresh_table(seed: int) -> None:
    g = geometric(35, seed)
    rng = random.Random(seed)
    table = PathTable("n0", k=3)
    table.update(g)
    for _ in range(4):
        g.remove_edges_from(rng.sample(list(g.edges), 3))
        if rng.random() < 0.5:
            g.remove_node(rng.choice([n for n in g if n != "n0"]))
        old = table.choices()
        changed = table.update(g)
        fresh = PathTable("n0", k=3)
        fresh.update(g)
        assert table.choices() == fresh.choices()
        assert changed == {
            d for d in old.keys() | fresh.choices().keys() if old.get(d) != fresh.get(d)
        }
        assert table.last_recomputed <= len(old)


def test_removal_of_unused_edge_recomputes_only_affected() -> None:
    g = geometric(40, 11)
    table = PathTable("n0", k=2)
    table.update(g)
    used = set()
    for ch in table.choices().values():
        for p in [ch.primary, ch.backup or [], *ch.disjoint]:
            used |= {frozenset(e) for e in itertools.pairwise(p)}
    spare = [e for e in g.edges if frozenset(e) not in used]
    assert spare, "test graph should have an edge no cached path uses"
    g.remove_edge(*spare[0])
    table.update(g)
    assert table.last_recomputed == 0
    fresh = PathTable("n0", k=2)
    fresh.update(g)
    assert table.choices() == fresh.choices()


def test_added_edge_and_cheaper_cost_recompute_all() -> None:
    g = geometric(30, 5)
    table = PathTable("n0")
    table.update(g)
    u, v = next(iter(g.edges))
    g.edges[u, v]["cost"] /= 2
    table.update(g)
    assert table.last_recomputed == len(nx.node_connected_component(g, "n0")) - 1
    fresh = PathTable("n0")
    fresh.update(g)
    assert table.choices() == fresh.choices()


def test_table_input_errors() -> None:
    with pytest.raises(ValueError, match="k must be"):
        PathTable("s", k=0)
    with pytest.raises(ValueError, match="disjoint"):
        PathTable("s", disjoint="both")
    g = tree_like()
    g.edges["s", "a"]["cost"] = -2
    with pytest.raises(PathError, match=r"'s'.*'a'|'a'.*'s'"):
        PathTable("s").update(g)
    table = PathTable("s")
    table.update(tree_like())
    assert table.update(nx.Graph([("x", "y")])) == set(tree_like()) - {"s"}
    assert table.choices() == {}


def test_detours_are_a_lookup_of_backups_around_removed_links() -> None:
    """A remote link's removal moves exactly the destinations whose primary crossed it
    and whose backup avoids it (by another first hop); the moves are valid paths in the
    graph without the link, and nothing else moves."""
    g = nx.cycle_graph(10)
    g = nx.relabel_nodes(g, {i: f"n{i}" for i in range(10)})
    nx.set_edge_attributes(g, 1.0, "cost")
    t = PathTable("n0", k=2)
    t.update(g)
    assert t.detours([]) == {}
    moves = t.detours([("n3", "n2")])
    crossing = {d for d, ch in t.choices().items()
                if any({a, b} == {"n2", "n3"} for a, b in itertools.pairwise(ch.primary))}
    assert {"n3", "n4"} <= crossing <= {"n3", "n4", "n5"}
    assert set(moves) == crossing
    assert set(moves.values()) == {"n9"}
    for dst in moves:
        assert ("n2", "n3") not in itertools.pairwise(t.get(dst).backup)  # type: ignore[union-attr]
    # n5-n6 is crossed at most by the primary to n5 (an equal-cost tie), whose backup
    # goes round by n1; when the backups cross a removed link too, nothing moves.
    m56 = t.detours([("n5", "n6")])
    assert set(m56) <= {"n5"} and set(m56.values()) <= {"n1"}
    assert t.detours([("n2", "n3"), ("n7", "n8")]) == {}
