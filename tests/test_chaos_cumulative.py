"""Cumulative link failures, the pure parts: the seeded cut order, which pairs are still
connected, and the share of them routed (no network)."""

from __future__ import annotations

import itertools

import networkx as nx
import pytest
from meshcore_tools.chaos import cumulative, routes
from meshcore_tools.chaos.faults import Topo
from meshcore_tools.lab import topology


@pytest.fixture(scope="module")
def rgg() -> nx.Graph:
    return Topo(topology.normalise(topology.build("rgg", 20, seed=3))).graph


def test_the_cut_order_is_seeded_distinct_and_bounded(rgg: nx.Graph) -> None:
    order = cumulative.cut_order(rgg, 10, seed=7)
    assert order == cumulative.cut_order(rgg, 10, seed=7)
    assert order != cumulative.cut_order(rgg, 10, seed=8)
    assert len(set(order)) == 10 and all(rgg.has_edge(a, b) for a, b in order)
    shuffled = nx.Graph(list(reversed(list(rgg.edges))))  # insertion order does not matter
    assert cumulative.cut_order(shuffled, 10, seed=7) == order
    assert len(cumulative.cut_order(rgg, 10_000, seed=7)) == rgg.number_of_edges()


def test_connected_pairs_match_a_path_search_after_every_cut(rgg: nx.Graph) -> None:
    cut: list[tuple[str, str]] = []
    for link in cumulative.cut_order(rgg, rgg.number_of_edges(), seed=1):
        cut.append(link)
        usable = cumulative.usable_after(rgg, cut)
        left = nx.Graph(usable)
        left.add_nodes_from(rgg)
        oracle = {(s, d) for s, d in itertools.permutations(rgg, 2) if nx.has_path(left, s, d)}
        got = routes.connected_pairs(rgg, usable)
        assert len(got) == len(set(got)) and set(got) == oracle
    assert routes.connected_pairs(rgg, []) == []  # every link cut: nothing is connected


def test_the_share_counts_routed_pairs_among_the_connected_ones() -> None:
    # a - b - c, and d alone (its link cut): 6 connected ordered pairs.
    usable = [("a", "b"), ("b", "c")]
    hops = {"a": {"b": "b", "c": "b"}, "b": {"a": "a", "c": "c"},
            "c": {"b": "b", "a": "b"}}
    pic = routes.picture(hops, "abcd", usable)
    assert (pic.connected, pic.routed, pic.share) == (6, 6, 1.0)
    hops["c"]["a"] = "d"  # a stale next hop over the cut link: black-holed
    hops["b"]["c"] = "a"
    hops["a"]["c"] = "b"  # b -> a -> b: a loop for a->c and b->c
    pic = routes.picture(hops, "abcd", usable)
    assert pic.connected == 6 and pic.routed == 3 and pic.share == 0.5
    assert sorted(pic.looping) == [("a", "c"), ("b", "c")] and pic.holes == [("c", "a")]
    assert routes.picture({}, "ab", []).share == 1.0  # nothing connected: nothing to miss


def test_the_summary_of_a_run() -> None:
    steps = [{"connected": 12, "routed": 12, "looping": 0, "reconverged": True},
             {"connected": 12, "routed": 9, "looping": 2, "reconverged": False},
             {"connected": 6, "routed": 6, "looping": 0, "reconverged": True}]
    assert cumulative.summary(steps) == {
        "cuts": 3, "final_share": 1.0, "min_share": 0.75, "steps_all_routed": 2,
        "steps_not_reconverged": 1, "looping_max": 2, "connected_pairs_end": 6}
    assert cumulative.summary([])["cuts"] == 0


def test_the_walk_ends_where_a_packet_would() -> None:
    hops = {"a": {"c": "b", "d": "b"}, "b": {"c": "c", "d": "a"}, "c": {}}
    assert routes.walk(hops, "a", "c") == (["a", "b", "c"], "arrived")
    assert routes.walk(hops, "a", "a") == (["a"], "arrived")
    assert routes.walk(hops, "c", "a") == (["c"], "hole")  # no route
    assert routes.walk(hops, "a", "d") == (["a", "b", "a"], "loop")  # last link loops
    up = {frozenset(("a", "b"))}
    assert routes.walk(hops, "a", "c", up) == (["a", "b"], "hole")  # b-c is not usable
