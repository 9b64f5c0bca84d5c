"""bench_paths still drives mesh_agent.paths as it is, and its figures still say what the
docs quote: one small graph for the timings (n 50, not 50/200/1000), the lab's smallest
topologies for the LFA section, and the brute-force and trap sections whole (they are
fast). In process, no network."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from meshcore_testkit.loader import load_path

BENCH = Path(__file__).resolve().parent / "bench" / "bench_paths.py"
IMPLS = {"mesh_agent", "mesh_agent_per_pair", "networkx_edge_disjoint_paths",
         "naive_remove_rerun"}


def load() -> ModuleType:
    return load_path("bench_paths", BENCH, register=True)


def rows(out: str) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in out.splitlines()]
    for r in parsed:
        assert r["bench"] == "paths", r
        assert isinstance(r["value"], int | float) and not isinstance(r["value"], bool), r
        if r["unit"] == "ratio" and not r["figure"].startswith("total_cost"):
            assert 0.0 <= r["value"] <= 1.0, r
    return parsed


def one(records: list[dict[str, Any]], figure: str, impl: str) -> dict[str, Any]:
    (r,) = [r for r in records if r["figure"] == figure and r["impl"] == impl]
    return r


def test_the_timings_on_a_small_graph_have_every_impl_and_the_networkx_baseline(
        capsys: pytest.CaptureFixture[str]) -> None:
    load().bench_size(50)
    records = rows(capsys.readouterr().out)
    for figure in ("plan_all_dst_ms", "plan_all_dst_cpu_ms"):
        timed = {r["impl"]: r for r in records if r["figure"] == figure}
        assert set(timed) == IMPLS, sorted(timed)  # networkx max-flow is the baseline
        for r in timed.values():
            assert r["n"] == 50 and r["k"] == 3, r
            assert 0 < r["value"] < 60_000, r
    for figure in ("plan_step_ms", "plan_step_cpu_ms", "replan_link_down_ms",
                   "replan_link_down_cpu_ms"):
        assert 0 < one(records, figure, "mesh_agent")["value"] < 60_000
    replan = one(records, "replan_link_down_cpu_ms", "mesh_agent")
    assert 1 <= replan["recomputed_destinations"] <= 49, replan
    # The claim the timings stand on: as many disjoint paths as max-flow allows (up to k).
    assert one(records, "found_min_k_maxflow_fraction", "mesh_agent")["value"] == 1.0
    assert one(records, "total_cost_vs_mesh_agent_mean", "naive_remove_rerun")["value"] >= 1.0
    coverage = {r["figure"] for r in records if r["figure"].startswith("coverage_")}
    assert {"coverage_destinations_with_backup", "coverage_backup_next_hops_loop_free"} \
        <= coverage, sorted(coverage)
    for figure in ("pairs_two_edge_connected", "bridge_fraction"):
        one(records, figure, "graph")


def test_the_brute_force_and_trap_sections_through_the_command_line(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load()
    monkeypatch.setattr(sys, "argv", [str(BENCH), "--only", "optimality", "--only", "traps"])
    bench.main()
    records = rows(capsys.readouterr().out)
    assert {r["figure"] for r in records} == {
        "total_cost_vs_optimum_max", "total_cost_vs_optimum_mean",
        "fewer_paths_than_optimum", "trap_failures"}
    best = one(records, "total_cost_vs_optimum_max", "mesh_agent")
    assert best["pairs"] > 0 and best["value"] == pytest.approx(1.0), best  # min-cost
    assert one(records, "total_cost_vs_optimum_mean", "naive_remove_rerun")["value"] >= 1.0
    assert one(records, "fewer_paths_than_optimum", "mesh_agent")["value"] == 0
    assert one(records, "trap_failures", "mesh_agent")["value"] == 0
    assert one(records, "trap_failures", "naive_remove_rerun")["value"] > 0  # what traps are for


def test_the_lfa_preference_against_the_disjoint_backups_on_lab_topologies(
        capsys: pytest.CaptureFixture[str]) -> None:
    load().bench_lfa(("ladder:8:1", "rgg:50:1"))
    records = rows(capsys.readouterr().out)
    figures = {"destinations_with_local_repair", "backup_next_hops_loop_free",
               "destinations_with_loop_free_repair", "destinations_with_node_protecting_repair",
               "update_cpu_ms_median_over_sources"}
    assert len(records) == 2 * 2 * len(figures)
    for topology in ("ladder-8", "rgg-50-s1"):
        mine = [r for r in records if r["topology"] == topology]
        by = {(r["impl"], r["figure"]): r for r in mine}
        assert set(by) == {(i, f) for i in ("disjoint_backup", "lfa_preference")
                           for f in figures}, sorted(by)
        assert by["disjoint_backup", "destinations_with_local_repair"]["destinations"] \
            == mine[0]["nodes"] * (mine[0]["nodes"] - 1)  # every source, every destination
        assert by["lfa_preference", "destinations_with_loop_free_repair"]["value"] \
            >= by["disjoint_backup", "destinations_with_loop_free_repair"]["value"]
        for impl in ("disjoint_backup", "lfa_preference"):
            assert 0 < by[impl, "update_cpu_ms_median_over_sources"]["value"] < 10_000
