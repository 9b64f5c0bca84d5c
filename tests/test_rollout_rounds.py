"""The rollout's switch rounds (nodes that restart together share no neighbour) and the
gate's reading of a failover storm that the wave's own restarts explain
(plugins/filter/meshcore_rollout.py), on plain data."""

from __future__ import annotations

import itertools
import re
from typing import Any

import networkx as nx
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from meshcore_testkit.loader import load_path
from meshcore_tools import ROOT
from test_rollout_gate_tasks import wave_play

mod = load_path("meshcore_rollout", ROOT / "plugins/filter/meshcore_rollout.py")
rounds = mod.meshcore_rollout_rounds
storms = mod.meshcore_rollout_storms
gate = mod.meshcore_rollout_gate


def answers(g: nx.Graph, names: dict[str, str] | None = None) -> dict[str, Any]:
    """Each host's /v1/neighbors answer for graph *g* (nodes are hosts)."""
    name = (names or {}).get
    return {h: {"node": name(h, h), "neighbors": [{"name": name(n, n), "state": "up"}
                                                   for n in g[h]]} for h in g}


def conflict(g: nx.Graph, a: str, b: str) -> bool:
    return g.has_edge(a, b) or bool(set(g[a]) & set(g[b]))


def check(g: nx.Graph, wave: list[str], got: list[list[str]]) -> None:
    assert sorted(itertools.chain(*got)) == sorted(wave)  # every wave node, once
    for r in got:
        for a, b in itertools.combinations(r, 2):
            assert not conflict(g, a, b), (a, b, r)


def test_a_grid_wave_switches_in_a_few_rounds_instead_of_one_node_at_a_time() -> None:
    g = nx.relabel_nodes(nx.grid_2d_graph(5, 5), lambda p: f"n{p[0]}{p[1]}")
    wave = sorted(g)
    got = rounds(answers(g), wave)
    check(g, wave, got)
    # distance-2 colouring of a grid: 5 colours suffice, greedy needs a few more at most
    assert 5 <= len(got) <= 8, got
    assert got == rounds(answers(g), list(reversed(wave)))  # deterministic


def test_no_node_loses_two_neighbours_at_once_even_outside_the_wave() -> None:
    # a and b are not adjacent but share x, which is not in the wave
    g = nx.Graph([("a", "x"), ("b", "x"), ("c", "y")])
    got = rounds(answers(g), ["a", "b", "c"])
    check(g, ["a", "b", "c"], got)
    assert len(got) == 2 and (["a", "c"] in got or ["b", "c"] in got)


def test_a_node_whose_neighbours_are_unknown_switches_alone() -> None:
    g = nx.path_graph(["a", "b", "c", "d", "e", "f"])
    nb = answers(g)
    nb["f"] = None  # its agent did not answer
    nb["a"] = {"status": 503}
    got = rounds(nb, ["a", "c", "f"])
    assert ["a"] in got and ["f"] in got and ["c"] in got


def test_node_names_and_a_round_cap() -> None:
    g = nx.empty_graph(["a", "b", "c", "d", "e"])  # nobody neighbours anybody
    names = {h: f"node-{h}" for h in g}
    assert rounds(answers(g, names), list(g), names) == [["a", "b", "c", "d", "e"]]
    assert rounds(answers(g, names), list(g), names, 2) == [["a", "b"], ["c", "d"], ["e"]]
    # the names matter: under inventory names a and b would not look adjacent
    g2 = nx.Graph([("a", "b")])
    assert rounds(answers(g2, names), ["a", "b"], names) == [["a"], ["b"]]
    assert rounds({}, []) == []


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 40), p=st.floats(0.02, 0.4), seed=st.integers(0, 10_000),
       share=st.floats(0.1, 1.0))
def test_rounds_are_a_distance_2_colouring_of_any_wave(n: int, p: float, seed: int,
                                                        share: float) -> None:
    g = nx.relabel_nodes(nx.gnp_random_graph(n, p, seed=seed), lambda i: f"h{i:02d}")
    wave = sorted(g)[: max(1, int(n * share))]
    got = rounds(answers(g), wave)
    check(g, wave, got)
    # greedy never needs more rounds than the largest conflict degree + 1
    most = max(sum(conflict(g, a, b) for b in wave if b != a) for a in wave)
    assert len(got) <= most + 1


# -- failover storms ---------------------------------------------------------------

def alerts(*items: tuple[str, str, str]) -> dict[str, Any]:
    return {"alerts": [{"labels": {"alertname": a, "node": n}, "state": s}
                       for a, n, s in items]}


ALL = ["n1", "n2", "n3", "n4"]
BEFORE = alerts(("MeshFailoverStorm", "n4", "pending"), ("MeshLinkDown", "n3", "firing"))
AFTER = alerts(("MeshFailoverStorm", "n1", "firing"), ("MeshFailoverStorm", "n2", "firing"),
               ("MeshFailoverStorm", "n4", "firing"), ("MeshFailoverStorm", "zz", "firing"),
               ("MeshFailoverStorm", "n3", "pending"))


def test_storms_are_the_new_failover_storms_on_known_hosts() -> None:
    assert storms(BEFORE, AFTER, [], {}, ALL) == ["n1", "n2"]
    names = {"n1": "node-1"}
    after = alerts(("MeshFailoverStorm", "node-1", "firing"))
    assert storms(BEFORE, after, [], names, ALL) == ["n1"]
    assert storms(BEFORE, AFTER, ["MeshFailoverStorm"], {}, ALL) == []
    assert storms(None, AFTER, [], {}, ALL) == [] and storms(BEFORE, None, [], {}, ALL) == []


def failovers(*items: tuple[str, float]) -> dict[str, Any]:
    return {"node": "x", "events": [{"id": i, "kind": "failover", "subject": s, "wall": w,
                                     "reason": "restart"} for i, (s, w) in enumerate(items)]}


def judge(failover_events: dict[str, Any], wave: list[str] | None = None,
          storm: str = "n3") -> dict[str, Any]:
    wave = wave or ["n1", "n2"]
    samples = {h: {"readyz": {"status": 200}, "release": "r2", "target": "r2"} for h in wave}
    paths: dict[str, Any] = {h: {"destinations": {o: {} for o in ALL if o != h}} for h in ALL}
    return dict(gate(samples, wave, wave, ALL, {"failovers": 2}, {}, paths,
                     {"before": BEFORE, "after": alerts(("MeshFailoverStorm", storm, "firing")),
                      "ignore": [], "failovers": failover_events, "soak_started": 1000.0}))


def test_a_storm_of_failovers_away_from_restarted_wave_nodes_is_the_waves_doing() -> None:
    # n3 (outside the wave) failed over from each wave node once or twice while it switched
    v = judge({"n3": failovers(("n1", 900.0), ("n2", 950.0), ("n1", 960.0), ("n2", 970.0),
                               ("n1", 980.0), ("n2", 990.0), ("n4", 500.0))})
    assert v["ok"], v["failures"]
    assert v["alerts"]["explained"] == ["MeshFailoverStorm{node=n3}"]


def test_a_restarted_wave_nodes_own_failovers_before_the_soak_are_its_restarts_doing() -> None:
    """A wave node's neighbours drop it from their adverts while it restarts, and it fails
    over away from them, outside the wave or not, until they hear the new agent (n1's
    storm away from n4 in a 50-node run); in the soak they count again."""
    v = judge({"n1": failovers(("n4", 900.0), ("n4", 910.0), ("n4", 920.0), ("n3", 930.0),
                               ("n4", 1001.0))}, wave=["n1", "n2"], storm="n1")
    assert v["ok"], v["failures"]
    v = judge({"n1": failovers(("n4", 900.0), ("n4", 1001.0), ("n4", 1010.0), ("n3", 1020.0))},
              wave=["n1", "n2"], storm="n1")
    assert v["failures"] == ["MeshFailoverStorm{node=n1}: 3 failovers not explained by the "
                             "wave's restarts (bound 2), away from: n4 (restart), in the soak "
                             "x2, n3 (restart), in the soak"]


@pytest.mark.parametrize("events, want", [
    # away from a node outside the wave: a real flap
    (failovers(("n4", 900.0), ("n4", 910.0), ("n4", 920.0), ("n1", 930.0)),
     "MeshFailoverStorm{node=n3}: 3 failovers not explained by the wave's restarts (bound 2), "
     "away from: n4 (restart) x3"),
    # away from a wave node, but after the soak started: the new release flaps
    (failovers(("n1", 1001.0), ("n1", 1010.0), ("n2", 1020.0), ("n2", 990.0)),
     "MeshFailoverStorm{node=n3}: 3 failovers not explained by the wave's restarts (bound 2), "
     "away from: n1 (restart), in the soak x2, n2 (restart), in the soak"),
    ({"status": 500}, "MeshFailoverStorm{node=n3}: its failover events could not be read"),
])
def test_a_storm_the_wave_does_not_explain_fails_the_gate(events: Any, want: str) -> None:
    v = judge({"n3": events})
    assert not v["ok"] and v["failures"] == [want]


def test_a_storm_on_a_node_whose_events_were_not_read_is_a_new_alert() -> None:
    v = judge({})
    assert v["failures"] == ["alerts firing that were neither firing nor pending before the "
                             "switch: MeshFailoverStorm{node=n3}"]


def test_the_storm_window_covers_the_alert_rule() -> None:
    """rollout_storm_window_s must reach back over MeshFailoverStorm's range and its for:
    (a failover older than that cannot have raised the alert; one inside must be read)."""
    def seconds(d: str) -> int:
        unit = {"s": 1, "m": 60, "h": 3600}
        return sum(int(n) * unit[u] for n, u in re.findall(r"(\d+)([smh])", d))

    rules = yaml.safe_load((ROOT / "roles/prometheus/files/rules/meshcore.yml").read_text())
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == mod.STORM_ALERT]
    (rng,) = re.findall(r"\[(\w+)\]", rule["expr"])
    play = wave_play()
    assert play["vars"]["rollout_storm_window_s"] >= seconds(rng) + seconds(rule.get("for", "0s"))


def test_node_names_come_from_the_inventory_else_the_host() -> None:
    """A host's mesh_agent_node_name where the inventory sets a non-empty one, else its
    inventory name; a host hostvars does not know keeps its own."""
    hostvars = {"a": {"mesh_agent_node_name": "pi-a"}, "b": {"mesh_agent_node_name": ""},
                "c": {"ansible_host": "10.0.0.3"}}
    assert mod.meshcore_node_names(["a", "b", "c", "d"], hostvars) == {
        "a": "pi-a", "b": "b", "c": "c", "d": "d"}
