"""bench_mapek_flap's summary: what it counts from the per-end lines (no namespaces)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from meshcore_testkit.loader import load_path

BENCH = Path(__file__).resolve().parent / "bench" / "bench_mapek_flap.py"


def load() -> ModuleType:
    return load_path("bench_mapek_flap", BENCH, register=True)


def end(label: str, node: str, lossy: float | None, storm: float | None,
        mttr: float | None, downs: int, flap: float | None = None,
        cause: int | None = None) -> list[dict[str, Any]]:
    tags = {"bench": "mapek_flap", "label": label, "run": 1, "node": node, "loss_pct": 40,
            "hold_s": 45.0}
    return [{**tags, "figure": "lossy_link_detect_s", "value": lossy},
            {**tags, "figure": "lossy_link_mttr_s", "value": mttr},
            {**tags, "figure": "failover_storm_detect_s", "value": storm, "cause": cause},
            {**tags, "figure": "failover_storm_mttr_s", "value": 30.0 if storm else None},
            {**tags, "figure": "flapping_link_detect_s", "value": flap},
            {**tags, "figure": "neighbour_downs", "value": downs}]


def test_the_summary_counts_ends_confirmed_while_the_loss_held() -> None:
    bench = load()
    records = (end("candidate", "n0", 11.8, 6.8, 45.0, 24, flap=9.0, cause=3)
               + end("candidate", "n1", 12.0, 7.0, 50.0, 26, flap=11.0)
               + end("baseline", "n0", 46.9, 6.9, 10.0, 27)  # after the fault: not in it
               + end("baseline", "n1", None, 11.6, None, 25))  # never
    by = {s["label"]: s for s in bench.summaries(records)}
    assert by["candidate"]["ends"] == 2 and by["candidate"]["lossy_in_fault_ends"] == 2
    assert by["candidate"]["lossy_detect_median_s"] == 11.9
    assert by["candidate"]["lossy_mttr_median_s"] == 47.5
    assert (by["baseline"]["lossy_ends"], by["baseline"]["lossy_in_fault_ends"]) == (1, 0)
    assert by["baseline"]["storm_detect_median_s"] == 9.25
    assert by["baseline"]["downs_median"] == 26.0 and by["baseline"]["downs_max"] == 27
    assert (by["candidate"]["flapping_ends"], by["candidate"]["flapping_detect_median_s"]) == (
        2, 10.0)
    assert (by["candidate"]["storm_ends"], by["candidate"]["storm_attributed_ends"]) == (2, 1)
    assert by["baseline"]["flapping_ends"] == 0 and by["candidate"]["storm_mttr_median_s"] == 30.0
    # Route churn at the ends (attributed or not), at the third node, and the pings.
    tags = {"bench": "mapek_flap", "run": 1, "loss_pct": 40, "hold_s": 45.0}
    records += [
        {**tags, "label": "candidate", "node": "n0", "figure": "route_churn_detect_s",
         "value": 12.0, "cause": 3},
        {**tags, "label": "candidate", "node": "n1", "figure": "route_churn_detect_s",
         "value": None, "cause": None},
        {**tags, "label": "baseline", "node": "n0", "figure": "route_churn_detect_s",
         "value": 8.0, "cause": None},
        {**tags, "label": "baseline", "node": "n2", "figure": "third_node_route_churn",
         "value": 2},
        {**tags, "label": "candidate", "figure": "ping_lost_fault_pct", "value": 0.5},
        {**tags, "label": "baseline", "figure": "ping_lost_fault_pct", "value": 12.0},
        {**tags, "label": "baseline", "figure": "ping_lost_fault_pct", "value": 20.0},
        {**tags, "label": "baseline", "figure": "ping_lost_after_pct", "value": 0.0}]
    by = {s["label"]: s for s in bench.summaries(records)}
    assert (by["candidate"]["churn_ends"], by["candidate"]["churn_attributed_ends"]) == (1, 1)
    assert (by["baseline"]["churn_ends"], by["baseline"]["churn_attributed_ends"]) == (1, 0)
    assert (by["baseline"]["third_node_churn_total"], by["candidate"]["third_node_churn_total"]
            ) == (2, 0)
    assert by["baseline"]["ping_lost_fault_pct_median"] == 16.0
    assert by["baseline"]["ping_lost_fault_pct_max"] == 20.0
    assert by["candidate"]["ping_lost_after_pct_median"] is None  # not measured
    # Summary lines in the input (an earlier run's file) are not counted again.
    again = bench.summaries(records + bench.summaries(records))
    assert again == bench.summaries(records)
