"""bench_lossy_background's pure parts: which links go lossy, and the table (no namespaces)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from meshcore_testkit.loader import load_path
from meshcore_tools.lab import topology as topo

BENCH = Path(__file__).resolve().parent / "bench" / "bench_lossy_background.py"


def load() -> ModuleType:
    return load_path("bench_lossy_background", BENCH, register=True)


def test_the_lossy_links_are_a_seeded_share_of_the_links() -> None:
    bench = load()
    state = topo.normalise(topo.build("rgg", 12, seed=1))
    links = {(str(x["a"]), str(x["b"])) for x in state["links"]}
    picked = bench.lossy_links(state, 0.25, seed=1)
    assert picked == bench.lossy_links(state, 0.25, seed=1)  # seeded
    assert set(picked) <= links and len(picked) == round(0.25 * len(links))
    assert bench.lossy_links(state, 0.25, seed=2) != picked
    assert len(bench.lossy_links(state, 0.0, seed=1)) == 1  # at least one
    assert len(bench.lossy_links(state, 1.0, seed=1)) == len(links)


def rec(impl: str, window: str, figure: str, seconds: float = 100.0,
        **fields: Any) -> dict[str, Any]:
    return {"bench": "lossy_background", "topology": "t", "impl": impl, "window": window,
            "trial": 1, "seconds": seconds, "nodes": 4, "figure": figure, **fields}


def test_the_table_weights_rates_by_window_and_sums_counts() -> None:
    bench = load()
    records = [
        rec("mesh_agent", "lossy", "route_events_per_node_min", 100.0, value=10.0),
        rec("mesh_agent", "lossy", "route_events_per_node_min", 300.0, value=2.0),
        rec("mesh_agent", "lossy", "neighbour_downs", lossy_links=5, other_links=1),
        rec("mesh_agent", "lossy", "neighbour_downs", lossy_links=2, other_links=0),
        rec("mesh_agent", "lossy", "all_pairs_routed", value=True),
        rec("mesh_agent", "lossy", "all_pairs_routed", value=False),
        rec("babeld-h0.2", "clean", "route_events_per_node_min", value=0.5),
        {"bench": "lossy_background", "figure": "skipped", "reason": "no root"},
    ]
    lines = bench.table(records).splitlines()
    assert len(lines) == 4  # header, rule, two rows
    agent = lines[2].split(" | ")
    assert agent[3] == "4.00"  # (10 x 100 + 2 x 300) / 400
    assert agent[4:6] == ["7", "1"]
    assert agent[6] == "-" and lines[2].endswith("| 1/2 |")
    assert lines[3].split(" | ")[3] == "0.50"
