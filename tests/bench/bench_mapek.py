"""Benchmark: what one MAPE-K step costs the agent (CPU per step, memory of the loop).

Run: python tests/bench/bench_mapek.py    (prints one JSON object per line)

CPU is ``process_time`` (it does not depend on the machine's load as wall time does).
Three cases: a quiet node (no crossing), a node with one lossy link (an incident opened,
a quarantine applied and released, over and over), and the Knowledge write of a step
that changed something (SQLite in a temporary state_dir, one transaction).

The samples are what the agent's view gives the loop with the native link sensor
(``mesh_agent.view``: the sensor's loss and each neighbour's hello counts, by which the
Monitor judges loss over ``loss_min_hellos``), not the count-less samples of the batman
backend, which skip that window.
"""

from __future__ import annotations

import json
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from mesh_agent.mapek import FixedPolicy, Knowledge, LinkSample, MapeK, Observation

NEIGHBOURS = 8
INTERVAL_S = 5.0  # mapek.interval_s default
HELLOS = 100  # a neighbour's 50 ms hellos in one step


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"bench": "mapek", "figure": figure, **extra, "value": value,
                      "unit": unit}), flush=True)


class Links:
    """One loop's samples, step after step: n0 at the given loss, the others clean, each
    with its (heard, expected) hello counts counted on as the link sensor does; n0 fails
    once per step while lossy (a flapping link: the sensor's ``downs`` counts, which
    every neighbour that ever went down has in the view's observation)."""

    def __init__(self) -> None:
        self.heard = [0] * NEIGHBOURS
        self.expected = 0
        self.downs = {f"n{i}": 1 for i in range(NEIGHBOURS)}  # each went down once, long ago

    def observe(self, at: float, loss_of_n0: float, **kw: Any) -> Observation:
        links = self(loss_of_n0)
        if loss_of_n0 >= 0.5:
            self.downs["n0"] += 1
        return Observation(at, links, link_downs=tuple(sorted(self.downs.items())), **kw)

    def __call__(self, loss_of_n0: float) -> tuple[LinkSample, ...]:
        self.expected += HELLOS
        out = []
        for i in range(NEIGHBOURS):
            loss = loss_of_n0 if i == 0 else 0.0
            self.heard[i] += round(HELLOS * (1 - loss))
            out.append(LinkSample(f"n{i}", loss, 0.002, (self.heard[i], self.expected), "mesh0"))
        return tuple(out)


def main() -> None:
    quiet = MapeK("a", "enforce", FixedPolicy(), 0.05, interval_s=INTERVAL_S)
    links = Links()
    n = 20_000
    t0 = time.process_time()
    for i in range(n):
        quiet.step(links.observe(i * INTERVAL_S, 0.0, failovers_total=i, cpu_seconds=i * 0.01))
    per = (time.process_time() - t0) / n
    emit("step_cpu", per * 1e6, "us", case="quiet", neighbours=NEIGHBOURS)
    emit("core_share", per / INTERVAL_S * 100, "percent", case="quiet",
         interval_s=INTERVAL_S)

    busy = MapeK("a", "enforce", FixedPolicy(), 0.05, interval_s=INTERVAL_S)
    links = Links()
    pattern = [0.5] * 4 + [0.0] * 20  # an incident, its recovery and the release
    t0 = time.process_time()
    for i in range(n):
        busy.step(links.observe(i * INTERVAL_S, pattern[i % len(pattern)]))
    emit("step_cpu", (time.process_time() - t0) / n * 1e6, "us", case="lossy_link",
         incidents=busy.analyzer.opened_total.get("lossy_link", 0),
         flapping=busy.analyzer.opened_total.get("flapping_link", 0))

    tracemalloc.start()
    kept = MapeK("a", "enforce", FixedPolicy(), 0.05, interval_s=INTERVAL_S)
    links = Links()
    for i in range(2_000):
        kept.step(links.observe(i * INTERVAL_S, pattern[i % len(pattern)]))
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    emit("loop_memory", current / 1024, "KiB", steps=2_000)

    with tempfile.TemporaryDirectory() as d:
        k = Knowledge.in_state_dir(Path(d), boot="bench")
        loop = MapeK("a", "enforce", FixedPolicy(), 0.05, interval_s=INTERVAL_S)
        links = Links()
        steps = [loop.step(links.observe(i * INTERVAL_S, pattern[i % len(pattern)]))
                 for i in range(2_400)]
        changed = [s for s in steps if s.opened or s.recovered or s.thresholds]
        t0, w0 = time.process_time(), time.perf_counter()
        for s in changed:
            k.record(s, time.time())
        emit("knowledge_write_cpu", (time.process_time() - t0) / len(changed) * 1e6, "us",
             wall_us=round((time.perf_counter() - w0) / len(changed) * 1e6, 1),
             writes=len(changed))
        k.close()


if __name__ == "__main__":
    main()
