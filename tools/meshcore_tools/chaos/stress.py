"""A controller that injects and removes random faults in a loop: the victim of the reaper test.

    python -m meshcore_tools.chaos stress --state lab.json --netns-tag TAG
        --journal-root DIR --count N --seed S [--restart-argv JSON]

Each injection prints ``{"injecting": ID, ...}`` *before* the node calls, so a
test that SIGKILLs this process at a random moment knows an upper bound of
what may be in place; the nodes' reapers must remove all of it at the
deadlines. The schedule (class, target, hold) is a seeded :class:`StressPlan`.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshcore_tools.chaos import faults
from meshcore_tools.chaos.faults import Fault, Options, Topo
from meshcore_tools.chaos.nodes import inject, netns_nodes, remove

# Classes with state to leave behind (the rogue's flooder also stops by itself).
STRESS_CLASSES = ("silent_cut", "link_down", "lossy", "slow", "node_crash", "frozen_agent",
                  "partition", "cpu_starvation", "rogue")
MARGIN_S = 1.0  # deadline = planned hold + margin


@dataclass(frozen=True)
class Step:
    fault: Fault
    hold: float


def stress_plan(topo: Topo, seed: int, count: int, classes: Sequence[str] = STRESS_CLASSES,
                hold: tuple[float, float] = (0.1, 0.8)) -> Iterator[Step]:
    rng = random.Random(seed)
    for i in range(count):
        cls = rng.choice(classes)
        target = faults.pick_target(cls, topo, rng)
        params = {"seconds": 30, "rate": 50} if cls == "rogue" else {}
        yield Step(Fault(cls, target, f"s{seed}x{i}", params), rng.uniform(*hold))


def run(state_file: Path, tag: str, journal_root: Path, count: int, seed: int,
        restart: Sequence[str], restart_log: str | None) -> None:
    state = json.loads(state_file.read_text())
    topo = Topo(state)
    nodes = netns_nodes(lambda n: f"{tag}-{n}", journal_root)
    opts = Options(restart=tuple(restart), restart_log=restart_log)
    for step in stress_plan(topo, seed, count):
        plan = faults.plan(step.fault, topo, opts)
        deadline = time.time() + step.hold + MARGIN_S
        print(json.dumps({"injecting": step.fault.id, "class": step.fault.cls,
                          "nodes": sorted(plan), "deadline": deadline}), flush=True)
        res = inject(nodes, step.fault, plan, deadline, "stress")
        ok = all(r.ok for r in res)
        time.sleep(step.hold)
        remove(nodes, step.fault, plan)
        print(json.dumps({"removed": step.fault.id, "ok": ok}), flush=True)
