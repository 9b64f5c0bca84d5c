#!/usr/bin/env python3
"""bench_timer_lateness: how late an asyncio timer fires with CPU hogs beside it.

    .venv/bin/python tests/bench/bench_timer_lateness.py [--hogs 0 2 4 8] [--seconds 20]
        [--sched other|fifo]

The agent's hello timer is an asyncio timer, and the MAPE-K loop's ``starved_node``
class opens when it fires late by more than the lateness threshold (0.25 s by
default, mesh_agent.mapek.monitor). This measures what busy loops in other
processes (one process each, as a hogging unit would run) do to a 100 ms timer on
this machine: the baseline is the same timer with no hog, in the same run. One JSON
line per hog count: lateness p50, p99 and max in milliseconds, the samples, the CPU
count and the 1-minute load average (docs/mapek.md, session 43).

``--sched fifo`` runs the hogs as real-time tasks (SCHED_FIFO, priority 1; root), as a
unit with ``CPUSchedulingPolicy=fifo`` would: CFS does not share the CPU with them, and
only the kernel's real-time throttling (``kernel.sched_rt_runtime_us``, 95 % by default)
leaves the rest a share. Every hog ends by itself at its deadline (the run's length plus
5 s) or when its parent is gone, so a killed bench leaves no hog behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import time
from typing import Any

INTERVAL_S = 0.1


def emit(**fields: Any) -> None:
    print(json.dumps({"bench": "timer_lateness", **fields}), flush=True)


def hog(deadline: float, fifo: bool) -> None:
    """Spin until *deadline* (time.monotonic) or until the parent is gone."""
    parent = os.getppid()
    if fifo:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    while time.monotonic() < deadline and os.getppid() == parent:
        for _ in range(100_000):
            pass


async def lateness(seconds: float) -> list[float]:
    """How late each of a run of INTERVAL_S sleeps woke, in seconds."""
    loop = asyncio.get_running_loop()
    late: list[float] = []
    end = loop.time() + seconds
    while loop.time() < end:
        t = loop.time()
        await asyncio.sleep(INTERVAL_S)
        late.append(loop.time() - t - INTERVAL_S)
    return late


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hogs", type=int, nargs="+", default=[0, 2, 4, 8],
                    help="busy-loop processes per run (0 is the baseline)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each run")
    ap.add_argument("--sched", choices=("other", "fifo"), default="other",
                    help="the hogs' scheduling policy (fifo: real-time, needs root)")
    args = ap.parse_args()
    fifo = args.sched == "fifo"
    if fifo and os.geteuid() != 0:
        emit(figure="skipped", reason="--sched fifo needs root")
        return
    for n in args.hogs:
        deadline = time.monotonic() + args.seconds + 5.0
        procs = [multiprocessing.Process(target=hog, args=(deadline, fifo), daemon=True)
                 for _ in range(n)]
        for p in procs:
            p.start()
        try:
            time.sleep(1.0)  # the hogs running before the timer starts
            late = asyncio.run(lateness(args.seconds))
        finally:
            for p in procs:
                p.terminate()
                p.join()
        # inclusive: the default (exclusive) extrapolates past the largest sample
        q = statistics.quantiles(late, n=100, method="inclusive")
        emit(figure="timer_late_ms", hogs=n, sched=args.sched, cpus=os.cpu_count(),
             samples=len(late),
             p50=round(q[49] * 1e3, 2), p99=round(q[98] * 1e3, 2),
             max=round(max(late) * 1e3, 2), load1=round(os.getloadavg()[0], 2),
             threshold_ms=250.0)


if __name__ == "__main__":
    main()
