"""Benchmark: k disjoint min-cost paths from one node to all destinations.

Run: python tests/bench/bench_paths.py    (prints one JSON object per line)

Every timing comes as wall and CPU (``process_time``) milliseconds: on a shared machine
the CPU figure is the one that does not depend on the load.

Compares mesh_agent.paths.PathTable (batch Suurballe/Bhandari) with calling the single-pair
API per destination, networkx max-flow ``edge_disjoint_paths`` (cost-blind), and the naive
"remove the used links and rerun Dijkstra" method, on seeded random geometric graphs.

``--only lfa``: on the lab's topologies (every node as the source), the share
of backup next hops that are RFC 5286 loop-free alternates, and of destinations with a
local repair at all, with the LFA preference (``PathTable(prefer_lfa=True)``, the agent's
default) against the disjoint backups alone (``prefer_lfa=False``), and what the
preference costs per update in CPU.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Hashable
from typing import Any

import networkx as nx
from mesh_agent.paths import (
    PathTable,
    k_disjoint_paths,
    path_cost,
    protection_summary,
)
from meshcore_testkit.oracle import brute_force_disjoint

K = 3
SAMPLE = 30  # destinations timed for the slow baselines on big graphs


def emit(figure: str, impl: str, value: float, unit: str, **extra: Any) -> None:
    row = {"bench": "paths", "figure": figure, "impl": impl, **extra, "value": value, "unit": unit}
    print(json.dumps(row), flush=True)


def geometric(n: int, seed: int, degree: float = 8.0) -> nx.Graph:
    """Largest component of a random geometric graph (``degree`` 8 gives a mean of about 7)."""
    r = math.sqrt(degree / (math.pi * n))
    g = nx.random_geometric_graph(n, r, seed=seed)
    g = g.subgraph(max(nx.connected_components(g), key=len)).copy()
    for u, v in g.edges:
        g.edges[u, v]["cost"] = 1.0 + 10.0 * math.dist(g.nodes[u]["pos"], g.nodes[v]["pos"]) / r
    return nx.relabel_nodes(g, {x: f"n{x}" for x in g})


def naive(g: nx.Graph, s: Hashable, t: Hashable, k: int) -> list[list[Hashable]]:
    h = g.copy()
    out: list[list[Hashable]] = []
    for _ in range(k):
        try:
            p = nx.dijkstra_path(h, s, t, weight="cost")
        except nx.NetworkXNoPath:
            break
        out.append(p)
        h.remove_edges_from(itertools.pairwise(p))
    return out


def median_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """(median wall ms, median CPU ms) of ``runs`` calls."""
    wall, cpu = [], []
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def bench_size(n: int) -> None:
    g = geometric(n, seed=42)
    nodes = sorted(g, key=lambda x: int(x[1:]))
    src = nodes[0]
    dsts = [d for d in nodes if d != src]
    size = {"n": g.number_of_nodes(), "k": K}
    runs = 5 if n <= 200 else 3

    def table() -> PathTable:
        t = PathTable(src, k=K)
        t.update(g)
        return t

    wall, cpu = median_ms(table, runs)
    emit("plan_all_dst_ms", "mesh_agent", round(wall, 2), "ms", **size, runs=runs)
    emit("plan_all_dst_cpu_ms", "mesh_agent", round(cpu, 2), "ms", **size, runs=runs)

    # The agent's whole per-topology-change planning step (agent._recompute without the
    # route sync): PathTable.update - primaries, k disjoint paths, backups, protection view,
    # LFA flags - then coverage() for the metrics and choices() for the route programmer.
    def step() -> None:
        t = table()
        t.coverage()
        t.choices()

    wall, cpu = median_ms(step, runs)
    emit("plan_step_ms", "mesh_agent", round(wall, 2), "ms", **size, runs=runs)
    emit("plan_step_cpu_ms", "mesh_agent", round(cpu, 2), "ms", **size, runs=runs)

    # The same step after one link on the source's busiest primary next hop fails: the
    # incremental update recomputes only destinations whose cached paths used it.
    base = table()
    busiest = max(
        {ch.primary_next_hop for ch in base.choices().values()},
        key=lambda nh: sum(ch.primary_next_hop == nh for ch in base.choices().values()),
    )
    cut = g.copy()
    cut.remove_edge(src, busiest)
    walls, cpus, redone = [], [], 0
    for _ in range(runs):
        t = table()
        w0, c0 = time.perf_counter(), time.process_time()
        t.update(cut)
        t.coverage()
        t.choices()
        walls.append((time.perf_counter() - w0) * 1e3)
        cpus.append((time.process_time() - c0) * 1e3)
        redone = t.last_recomputed
    extra = {"runs": runs, "recomputed_destinations": redone}
    emit(
        "replan_link_down_ms",
        "mesh_agent",
        round(statistics.median(walls), 2),
        "ms",
        **size,
        **extra,
    )
    emit(
        "replan_link_down_cpu_ms",
        "mesh_agent",
        round(statistics.median(cpus), 2),
        "ms",
        **size,
        **extra,
    )

    rng = random.Random(n)
    sample = dsts if len(dsts) <= SAMPLE else sorted(rng.sample(dsts, SAMPLE))
    scale = len(dsts) / len(sample)
    sampled = {} if sample is dsts else {"sampled_destinations": len(sample)}

    def per_pair() -> None:
        for d in sample:
            k_disjoint_paths(g, src, d, K)

    maxflow: dict[Hashable, int] = {}

    def nx_flow() -> None:
        for d in sample:
            maxflow[d] = len(list(nx.edge_disjoint_paths(g, src, d)))

    def naive_all() -> None:
        for d in sample:
            naive(g, src, d, K)

    for impl, fn in (
        ("mesh_agent_per_pair", per_pair),
        ("networkx_edge_disjoint_paths", nx_flow),
        ("naive_remove_rerun", naive_all),
    ):
        wall, cpu = median_ms(fn, 1 if sampled else 3)
        emit("plan_all_dst_ms", impl, round(wall * scale, 2), "ms", **size, **sampled)
        emit("plan_all_dst_cpu_ms", impl, round(cpu * scale, 2), "ms", **size, **sampled)

    # Quality on the sampled destinations: did we get min(k, max-flow) paths?
    t = table()
    ours_ok = naive_ok = 0
    naive_extra = []
    for d in sample:
        want = min(K, maxflow[d])
        ch = t.get(d)
        ours_ok += ch is not None and len(ch.disjoint) == want
        nv = naive(g, src, d, K)
        naive_ok += len(nv) == want
        if ch is not None and len(nv) == len(ch.disjoint):
            ours = sum(path_cost(g, p) for p in ch.disjoint)
            naive_extra.append(sum(path_cost(g, p) for p in nv) / ours)
    emit(
        "found_min_k_maxflow_fraction",
        "mesh_agent",
        ours_ok / len(sample),
        "ratio",
        **size,
        **sampled,
    )
    emit(
        "found_min_k_maxflow_fraction",
        "naive_remove_rerun",
        naive_ok / len(sample),
        "ratio",
        **size,
        **sampled,
    )
    if naive_extra:
        emit(
            "total_cost_vs_mesh_agent_mean",
            "naive_remove_rerun",
            round(statistics.mean(naive_extra), 4),
            "ratio",
            **size,
            **sampled,
            pairs=len(naive_extra),
        )
    for key, value in t.coverage().items():
        emit(f"coverage_{key}", "mesh_agent", round(value, 4), "ratio", **size)
    summary = protection_summary(g)
    emit(
        "pairs_two_edge_connected",
        "graph",
        round(summary["pairs_two_edge_connected"], 4),
        "ratio",
        **size,
    )
    emit("bridge_fraction", "graph", round(summary["bridge_fraction"], 4), "ratio", **size)


def bench_optimality() -> None:
    """Total cost against brute force on small graphs (n 12-15)."""
    rng = random.Random(7)
    ours_ratio, naive_ratio, naive_short, pairs = [], [], 0, 0
    for i in range(20):
        # Sparser than the timing graphs: brute force enumerates every simple path.
        g = geometric(rng.randint(12, 15), seed=100 + i, degree=4.5)
        nodes = list(g)
        for _ in range(3):
            s, t = rng.sample(nodes, 2)
            if sum(1 for _ in itertools.islice(nx.all_simple_paths(g, s, t), 400)) >= 400:
                continue  # too many paths to brute-force quickly
            count, best = brute_force_disjoint(g, s, t, K)
            if count == 0 or best == 0:
                continue
            pairs += 1
            ours = k_disjoint_paths(g, s, t, K)
            assert len(ours) == count
            ours_ratio.append(sum(path_cost(g, p) for p in ours) / best)
            nv = naive(g, s, t, K)
            if len(nv) == count:
                naive_ratio.append(sum(path_cost(g, p) for p in nv) / best)
            else:
                naive_short += 1
    extra = {"k": K, "pairs": pairs, "n": "12-15"}
    emit("total_cost_vs_optimum_max", "mesh_agent", round(max(ours_ratio), 6), "ratio", **extra)
    emit(
        "total_cost_vs_optimum_mean",
        "naive_remove_rerun",
        round(statistics.mean(naive_ratio), 4),
        "ratio",
        **extra,
        compared_pairs=len(naive_ratio),
    )
    emit("fewer_paths_than_optimum", "naive_remove_rerun", naive_short, "pairs", **extra)
    emit("fewer_paths_than_optimum", "mesh_agent", 0, "pairs", **extra)


def bench_traps() -> None:
    """Random-cost Suurballe traps, optionally chained in series, with noise nodes."""
    rng = random.Random(3)
    trials = 200
    naive_fail = ours_fail = 0
    for _ in range(trials):
        g = nx.Graph()
        prev = "s"
        for j in range(rng.randint(1, 3)):
            a, b, x, y, nxt = (f"a{j}", f"b{j}", f"x{j}", f"y{j}", f"t{j}")
            short, long_ = rng.uniform(1, 2), rng.uniform(2.5, 5)
            g.add_edge(prev, a, cost=short)
            g.add_edge(a, b, cost=rng.uniform(0.1, 1))
            g.add_edge(b, nxt, cost=short)
            g.add_edge(prev, x, cost=long_)
            g.add_edge(x, b, cost=rng.uniform(2.5, 5))
            g.add_edge(a, y, cost=rng.uniform(2.5, 5))
            g.add_edge(y, nxt, cost=long_)
            prev = nxt
        want = min(2, len(list(nx.edge_disjoint_paths(g, "s", prev))))
        naive_fail += len(naive(g, "s", prev, 2)) < want
        ours_fail += len(k_disjoint_paths(g, "s", prev, 2)) < want
    emit("trap_failures", "naive_remove_rerun", naive_fail, "instances", k=2, trials=trials)
    emit("trap_failures", "mesh_agent", ours_fail, "instances", k=2, trials=trials)


LFA_TOPOLOGIES = (
    "rgg:50:1",
    "rgg:50:2",
    "rgg:50:3",
    "ringtree:72:1",
    "ringtree:72:2",
    "community:0:1",
    "grid:25:1",
    "ladder:8:1",
)


def bench_lfa(specs: tuple[str, ...] = LFA_TOPOLOGIES) -> None:
    """Loop-free backups with and without the LFA preference, per lab topology."""
    from meshcore_tools.lab.topology import build

    for spec in specs:
        kind, n, seed = spec.split(":")
        topo = build(kind, int(n), int(seed))
        g = topo.graph()  # the topology's own link costs, as the lab gives the agents
        extra = {"topology": topo.name, "nodes": g.number_of_nodes(), "links": g.number_of_edges()}
        for impl, prefer in (("disjoint_backup", False), ("lfa_preference", True)):
            dests = repair = loop_free = protecting = 0
            cpu: list[float] = []
            for src in sorted(g.nodes):
                table = PathTable(src, k=K, prefer_lfa=prefer)
                t0 = time.process_time()
                table.update(g)
                cpu.append((time.process_time() - t0) * 1000)
                for ch in table.choices().values():
                    dests += 1
                    if ch.backup_next_hop is not None:
                        repair += 1
                        loop_free += bool(ch.backup_loop_free)
                        protecting += bool(ch.backup_node_protecting)
            emit(
                "destinations_with_local_repair",
                impl,
                round(repair / dests, 4),
                "ratio",
                destinations=dests,
                **extra,
            )
            emit(
                "backup_next_hops_loop_free",
                impl,
                round(loop_free / max(repair, 1), 4),
                "ratio",
                backup_next_hops=repair,
                **extra,
            )
            emit(
                "destinations_with_loop_free_repair",
                impl,
                round(loop_free / dests, 4),
                "ratio",
                **extra,
            )
            emit(
                "destinations_with_node_protecting_repair",
                impl,
                round(protecting / dests, 4),
                "ratio",
                **extra,
            )
            emit(
                "update_cpu_ms_median_over_sources",
                impl,
                round(statistics.median(cpu), 2),
                "ms",
                **extra,
            )


SECTIONS = ("size", "optimality", "traps", "lfa")


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--only",
        choices=SECTIONS,
        action="append",
        help="run only this section (repeatable); default: all",
    )
    only = set(ap.parse_args().only or SECTIONS)
    if "size" in only:
        for n in (50, 200, 1000):
            bench_size(n)
    if "optimality" in only:
        bench_optimality()
    if "traps" in only:
        bench_traps()
    if "lfa" in only:
        bench_lfa()


if __name__ == "__main__":
    main()
