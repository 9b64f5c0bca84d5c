"""bench_mapek_learning's bookkeeping, no network: which incidents a fault explains."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import ModuleType

import networkx as nx
import pytest
from meshcore_testkit.loader import load_path
from meshcore_tools.chaos.faults import Topo

BENCH = Path(__file__).parent / "bench" / "bench_mapek_learning.py"


def bench() -> ModuleType:
    return load_path("bench_mapek_learning", BENCH, register=True)


class Path4:
    """a - b - c - d"""

    graph = nx.path_graph(["a", "b", "c", "d"])


def inc(cls: str, target: str, at: float) -> dict[str, object]:
    return {"class": cls, "target": target, "detected_wall": at}


def test_a_fault_explains_what_it_touched_while_it_held() -> None:
    b = bench()
    t: Topo = Path4()  # type: ignore[assignment]
    link = b.Window(100.0, 130.0, ("b", "c"), "link")
    node = b.Window(200.0, 230.0, ("a",), "node")
    # a link incident on the faulty link, from either end; not on another link
    assert link.explains("b", inc("lossy_link", "link:c", 110), t)
    assert link.explains("c", inc("slow_link", "link:b", 110), t)
    assert not link.explains("c", inc("lossy_link", "link:d", 110), t)
    # only while the fault held (and its grace)
    assert not link.explains("b", inc("lossy_link", "link:c", 131), t)
    assert not link.explains("b", inc("lossy_link", "link:c", 99), t)
    # mesh-wide classes anywhere; node classes near the target only
    assert link.explains("a", inc("route_churn", "self:", 120), t)
    assert link.explains("a", inc("starved_node", "self:", 120), t) is False
    assert node.explains("b", inc("advert_storm", "self:", 210), t)
    assert not node.explains("c", inc("advert_storm", "self:", 210), t)
    # a starved node's links look bad from its neighbours
    assert node.explains("b", inc("lossy_link", "link:a", 210), t)
    assert not node.explains("b", inc("lossy_link", "link:c", 210), t)
    assert b.attribute(inc("lossy_link", "link:a", 210), "b", [link, node], t)
    assert not b.attribute(inc("lossy_link", "link:a", 150), "b", [link, node], t)


def test_the_background_links_are_seeded() -> None:
    b = bench()
    t: Topo = Path4()  # type: ignore[assignment]
    assert b.background_links(t, 2, 1) == b.background_links(t, 2, 1)
    assert len(b.background_links(t, 9, 1)) == 3


def test_the_fault_mix_has_fixed_targets_off_the_background_links() -> None:
    """Both labs must meet the same faults: targets come from the seed and the topology,
    never from either lab's routes."""
    b = bench()
    g = nx.random_geometric_graph(12, 0.5, seed=3)
    t = type("T", (), {"graph": nx.relabel_nodes(g, {i: f"n{i:02d}" for i in g})})()
    bg = b.background_links(t, 2, 1)
    mix = b.fault_mix(["lossy", "slow", "cpu_starvation", "rogue"], 10.0, 5.0, 1, t, bg)
    again = b.fault_mix(["lossy", "slow", "cpu_starvation", "rogue"], 10.0, 5.0, 1, t, bg)
    targets = [f["target"] for f in mix["faults"]]
    assert targets == [f["target"] for f in again["faults"]]
    assert all(isinstance(x, list) and x for x in targets)
    for f in mix["faults"][:2]:
        assert tuple(sorted(f["target"])) not in {tuple(sorted(x)) for x in bg}


def test_fault_parameters_can_be_overridden() -> None:
    b = bench()
    params = b.parse_params(["lossy.loss_pct=25", "rogue.mode=garbage"])
    assert params["lossy"] == {"loss_pct": 25} and params["rogue"]["mode"] == "garbage"
    assert b.PARAMS["lossy"] == {"loss_pct": 40}  # the defaults are left alone
    g = nx.random_geometric_graph(12, 0.5, seed=3)
    t = type("T", (), {"graph": nx.relabel_nodes(g, {i: f"n{i:02d}" for i in g})})()
    mix = b.fault_mix(["lossy", "lossy"], 10.0, 5.0, 1, t, [], params)
    assert [f["params"] for f in mix["faults"]] == [{"loss_pct": 25}] * 2
    for bad in ("lossy=25", "nope.x=1", "lossy.=3"):
        with pytest.raises(SystemExit):
            b.parse_params([bad])


def test_every_pairs_primary_path_is_walked_for_the_links_it_crosses() -> None:
    b = bench()
    # a - b - c - d, routed along the line, but c has no route to a (a hole) and sends b's
    # traffic to d, which sends it back (a loop)
    hops = {"a": {"b": "b", "c": "b", "d": "b"}, "b": {"a": "a", "c": "c", "d": "c"},
            "c": {"b": "d", "d": "d"}, "d": {"a": "c", "b": "c", "c": "c"}}
    crossed = b.crossed_links(hops, ["a", "b", "c", "d"])
    ab, bc, cd = frozenset("ab"), frozenset("bc"), frozenset("cd")
    # a->b, a->c, a->d, b->a (c->a has no route; d->a's walk stops at c)
    assert crossed[ab] == 4
    # a->c, a->d, b->c, b->d
    assert crossed[bc] == 4
    # a->d, b->d, c->d, d->c; c->b and d->b cross it twice (the loop), d->a once
    assert crossed[cd] == 4 + 2 + 2 + 1
    assert b.crossed_links({}, ["a", "b"]) == {}


def samples(start: float, counts: list[int], link: str = "bc") -> list[tuple[float, object]]:
    """One sample a second from *start*, *counts* pairs crossing *link*, 3 on another."""
    return [(start + i, {frozenset(link): n, frozenset("ab"): 3} if n else {frozenset("ab"): 3})
            for i, n in enumerate(counts)]


def test_a_link_fault_is_mitigated_when_no_pair_crosses_it_any_more() -> None:
    b = bench()
    # injected at 100.5: samples at 101, 102, 103, 104; off the link from the 3rd on
    s = samples(101.0, [5, 4, 0, 0])
    assert b.link_impact(s, ("b", "c"), 100.5, 104.5) == (5, 2.5)
    assert b.link_impact(s, ("c", "b"), 100.5, 104.5) == (5, 2.5)
    # still crossed at the removal: never mitigated
    assert b.link_impact(samples(101.0, [5, 0, 0, 2]), ("b", "c"), 100.5, 104.5) == (5, None)
    # back on the link after leaving it: mitigated only when it left for good
    assert b.link_impact(samples(101.0, [5, 0, 3, 0]), ("b", "c"), 100.5, 104.5) == (5, 3.5)
    # nothing crossed it while it held
    assert b.link_impact(samples(101.0, [0, 0, 0]), ("b", "c"), 100.5, 104.5) == (0, 0.0)
    assert b.link_impact(s, ("c", "d"), 100.5, 104.5) == (0, 0.0)
    # no sample in the window: nothing known
    assert b.link_impact(s, ("b", "c"), 200.0, 230.0) == (None, None)


def test_samples_outside_the_fault_window_are_ignored() -> None:
    b = bench()
    # crossed before the injection and again after the removal; off it while it held
    # from the 2nd sample of the window
    s = samples(98.0, [7, 7, 6, 0, 0, 0, 9, 9])  # at 98 .. 105
    assert b.link_impact(s, ("b", "c"), 99.5, 103.5) == (6, 1.5)
    assert b.link_impact(s, ("b", "c"), 101.0, 103.5) == (0, 0.0)
    # what it carried when the fault began: the last sample before the injection
    assert b.crossed_before(s, ("b", "c"), 101.0) == 6
    assert b.crossed_before(s, ("c", "b"), 99.5) == 7
    assert b.crossed_before(s, ("b", "c"), 98.0) is None  # no sample before
    assert b.crossed_before(s, ("b", "c"), 120.0) is None  # none in the 5 s before
    assert b.crossed_before(s, ("c", "d"), 101.0) == 0


class FakeMesh:
    names = ("a", "b", "c", "d")

    def get(self, node: str, path: str) -> tuple[int, str]:
        return 200, '{"incidents": [], "thresholds": {}}'


def test_round_rows_and_summaries_carry_the_link_faults_impact() -> None:
    b = bench()
    t: Topo = Path4()  # type: ignore[assignment]
    side = b.Side("learned", None, FakeMesh())
    side.doc = {"status": "ok", "measurements": {"steps": [
        {"class": "lossy", "target": ["b", "c"], "injected_at": 100.5, "removed_at": 104.5},
        {"class": "cpu_starvation", "target": ["b"], "injected_at": 110.0, "removed_at": 115.0},
        {"class": "slow", "target": ["c", "d"], "injected_at": 120.5, "removed_at": 123.5},
        {"class": "lossy", "target": ["a", "b"], "skipped": "injection refused"}]}}
    side.samples = samples(101.0, [5, 4, 0, 0]) + samples(121.0, [2, 2, 1], "cd")
    b.record_round(side, 1, argparse.Namespace(grace=15.0), 60.0)
    row = b.round_row(side, t, 1, [], {}, 200.0)
    assert row["impact"] == [
        {"class": "lossy", "link": ["b", "c"], "crossed_before_injection": None,
         "crossed_at_injection": 5, "mitigated_s": 2.5},
        {"class": "slow", "link": ["c", "d"], "crossed_before_injection": None,
         "crossed_at_injection": 2, "mitigated_s": None}]
    assert row["mitigated_s_p50"] == 2.5
    assert row["never_mitigated"] == 1
    json.dumps(row)  # one JSON line
    later = {**row, "round": 2, "mitigated_s_p50": 1.5, "never_mitigated": 0}
    summary = b.summary("learned", [row, later], 1, 4)
    assert (summary["mitigated_s_p50_first"], summary["mitigated_s_p50_last"]) == (2.5, 1.5)
    assert (summary["never_mitigated_first"], summary["never_mitigated_last"]) == (1, 0)
    assert summary["rounds"] == 2
    # Traffic that left before the fault's first sample counts as mitigated at once.
    side.samples = samples(99.0, [4, 4, 0, 0, 0, 0]) + samples(121.0, [2, 2, 1], "cd")
    b.record_round(side, 1, argparse.Namespace(grace=15.0), 60.0)
    row = b.round_row(side, t, 1, [], {}, 200.0)
    assert [x["crossed_before_injection"] for x in row["impact"]] == [4, None]
    assert row["impact"][0]["crossed_at_injection"] == 0 and row["mitigated_s_p50"] == 0.0


class IncidentsMesh(FakeMesh):
    """b's agent answers with three lossy_link incidents on link:c during the fault."""

    def get(self, node: str, path: str) -> tuple[int, str]:
        if node != "b":
            return super().get(node, path)
        incs = [{**inc("lossy_link", "link:c", 101.0 + k), "id": k, "mttr_seconds": 30.0,
                 "state": "recovered", "carried": carried, "time_to_mitigate_seconds": ttm}
                for k, (carried, ttm) in enumerate([(3, 4.0), (2, None), (0, None)])]
        return 200, json.dumps({"incidents": incs, "thresholds": {}})


def test_the_round_carries_the_agents_own_time_to_mitigate() -> None:
    b = bench()
    t: Topo = Path4()  # type: ignore[assignment]
    side = b.Side("fixed", None, IncidentsMesh())
    side.doc = {"status": "ok", "measurements": {"steps": [
        {"class": "lossy", "target": ["b", "c"], "injected_at": 100.5, "removed_at": 130.5}]}}
    seen = b.record_round(side, 1, argparse.Namespace(grace=15.0), 60.0)
    row = b.round_row(side, t, 1, [], seen, 200.0)
    assert row["attributed"] == 3
    # over the two whose link carried routes of b's: one mitigated at 4 s, one never
    assert (row["ttm_p50_s"], row["ttm_p95_s"], row["carried_not_mitigated"]) == (4.0, 4.0, 1)
    summary = b.summary("fixed", [row], 1, 4)
    assert summary["ttm_p95_s_first"] == summary["ttm_p95_s_last"] == 4.0
