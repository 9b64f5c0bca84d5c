"""Reaching the node side: ``python3 -m meshcore_chaos.node`` on each node, by some prefix.

The prefix is all that differs between targets:

- a netns lab node: ``ip netns exec <ns> env PYTHONPATH=<files/chaos> python3``;
- a podman lab node: ``podman exec -i <container> python3`` (the chaos_reaper
  role installed the package);
- a fleet node: ``ssh <host> sudo python3``.

:func:`inject` puts one fault on every node of its plan, all at once (all or
nothing: a node that refuses makes the others remove theirs) and :func:`remove`
takes it off again, all at once. Both only move bytes; what to inject is :mod:`.faults`' decision.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import meshcore_chaos

from meshcore_tools import netns
from meshcore_tools.chaos.faults import Fault, Op

# Node CLIs started at once by inject/remove (a partition of a 1,000-node fleet in batches).
MAX_PARALLEL = 64

NODE_PACKAGE_ROOT = Path(meshcore_chaos.__file__).resolve().parents[1]


@dataclass
class Result:
    node: str
    rc: int
    data: dict[str, Any]

    @property
    def ok(self) -> bool:
        """The node CLI ran (rc 0) and says it did what was asked."""
        return self.rc == 0 and bool(self.data.get("ok"))


class Nodes:
    """Runs the node-side CLI on a named node and parses its JSON line.

    ``cli_of(node)`` is the argv that starts the CLI there, up to its
    subcommand (``... python3 -m meshcore_chaos.node --journal DIR``, or the
    role's wrapper ``meshcore-chaos-node``); ``timer`` is what ``inject
    --timer`` asks for (``systemd`` where the node runs systemd).
    """

    def __init__(self, cli_of: Callable[[str], Sequence[str]], timer: str = "none",
                 timeout: float = 30.0) -> None:
        self.cli_of = cli_of
        self.timer = timer
        self.timeout = timeout

    def argv(self, node: str, *args: str) -> list[str]:
        return [*self.cli_of(node), *args]

    def call(self, node: str, *args: str, stdin: str | None = None) -> Result:
        try:
            res = subprocess.run(self.argv(node, *args), input=stdin, capture_output=True,
                                 text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            return Result(node, 124, {"ok": False, "error": "timeout"})
        lines = res.stdout.strip().splitlines()
        try:
            data = json.loads(lines[-1]) if lines else {}
        except ValueError:
            data = {}
        if not data:
            data = {"ok": False, "error": (res.stderr or res.stdout).strip()[-500:]}
        return Result(node, res.returncode, data)


def netns_nodes(ns_of: Callable[[str], str], journal_root: Path,
                python: str = sys.executable) -> Nodes:
    """Nodes of a netns lab: each namespace runs the package from this checkout.

    ``nsenter --net`` rather than ``ip netns exec``: the latter remounts /sys,
    which hides the cgroup filesystem the cpu_starvation fault writes to.
    """
    def cli(node: str) -> list[str]:
        return ["nsenter", f"--net={netns.NETNS_DIR / ns_of(node)}", "env",
                f"PYTHONPATH={NODE_PACKAGE_ROOT}", python, "-m", "meshcore_chaos.node",
                "--journal", str(journal_root / node)]

    return Nodes(cli)


def wrapper_nodes(prefix_of: Callable[[str], Sequence[str]]) -> Nodes:
    """Nodes with the chaos_reaper role: its wrapper, run through ``prefix_of`` (``podman
    exec -i <container>``, ``ssh <host> sudo``); faults get the node's systemd timer."""
    return Nodes(lambda node: [*prefix_of(node), "meshcore-chaos-node"], timer="systemd")


def reaper_argv(nodes: Nodes, node: str, interval: float = 0.1) -> list[str]:
    """The lab's reaper process for a node (the role's timer does this on hardware)."""
    return nodes.argv(node, "reaper", "--interval", str(interval))


def _on_all(plan: Mapping[str, Any], call: Callable[[str], Result]) -> list[Result]:
    """*call* on every node of the plan at once, results in the plan's order. Each node's
    CLI starts a Python (about 0.1 s): one after the other, the two ends of a cut link
    were cut some 0.1 s apart, and a flow crossing in the later direction lost only what
    followed the second cut (a shorter outage than the fault's)."""
    if len(plan) <= 1:
        return [call(node) for node in plan]
    with ThreadPoolExecutor(max_workers=min(len(plan), MAX_PARALLEL)) as pool:
        return list(pool.map(call, plan))


def inject(nodes: Nodes, fault: Fault, plan: Mapping[str, list[Op]], deadline: float,
           experiment: str) -> list[Result]:
    """Journal and apply the fault on all its nodes at once; on any refusal, remove it
    everywhere (all or nothing)."""
    done = _on_all(plan, lambda node: nodes.call(
        node, "inject", "--id", fault.id, "--experiment", experiment, "--fault", fault.cls,
        "--deadline", f"{deadline:.3f}", "--timer", nodes.timer, stdin=json.dumps(plan[node])))
    if any(r.rc != 0 or not r.data.get("ok") for r in done):
        remove(nodes, fault, plan)
    return done


def remove(nodes: Nodes, fault: Fault, plan: Mapping[str, list[Op]]) -> list[Result]:
    """Take the fault off all its nodes at once (a partition heals everywhere together)."""
    return _on_all(plan, lambda node: nodes.call(node, "remove", "--id", fault.id))


def leftovers(nodes: Nodes, names: Sequence[str]) -> dict[str, list[str]]:
    """Node -> what is still on record or tagged there (empty nodes left out)."""
    out = {}
    for node in names:
        r = nodes.call(node, "leftovers")
        if r.data.get("left") or r.rc not in (0, 1):
            out[node] = list(r.data.get("left") or [r.data.get("error", "?")])
    return out


def rollback(nodes: Nodes, names: Sequence[str]) -> dict[str, Result]:
    return {node: nodes.call(node, "rollback") for node in names}
