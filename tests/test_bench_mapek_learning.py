"""bench_mapek_learning's bookkeeping, no network: which incidents a fault explains."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import networkx as nx
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
