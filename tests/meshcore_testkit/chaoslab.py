"""A netns lab for the chaos tests: namespaces, one reaper and one stand-in agent per node.

The stand-in agent is a plain process whose command line carries ``mesh_agent
run`` (what the fault classes look for), so a fault module's effect on "the
agent" (SIGKILL, SIGSTOP, a cpu quota) is checked without a routing daemon;
the benchmarks and the slow suite run the real agent. Namespaces are
``<tag>-<node>`` with a per-run tag (:class:`meshcore_tools.netns.NetnsLab`),
and everything goes on exit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meshcore_tools import netns
from meshcore_tools.chaos.nodes import Nodes, leftovers, netns_nodes, reaper_argv
from meshcore_tools.lab import topology

# An idle loop, or with ``busy`` a CPU spinner (to see a cgroup quota bite).
STAND_IN = "import sys, time\nwhile True:\n    if sys.argv[1] == 'idle': time.sleep(0.05)\n"


def stand_in_argv(busy: bool = False) -> list[str]:
    return [sys.executable, "-c", STAND_IN, "busy" if busy else "idle", "mesh_agent", "run"]


class ChaosLab(netns.NetnsLab):
    def __init__(self, nodes: Sequence[str], links: Sequence[tuple[str, str]], base: Path,
                 prefix: str = "mcx", reapers: bool = True, stand_ins: bool = True) -> None:
        topo = topology.Topology("chaos", [{"name": n} for n in nodes],
                                 [{"a": a, "b": b} for a, b in links])
        super().__init__(topology.normalise(topo), prefix)
        self.base = base
        self.nodes: Nodes = netns_nodes(self.ns, base / "journal")
        self.with_reapers = reapers
        self.with_stand_ins = stand_ins
        self.reapers: dict[str, subprocess.Popen[bytes]] = {}
        self.agents: dict[str, subprocess.Popen[bytes]] = {}

    def up(self) -> None:
        super().up()
        for node in self.state["nodes"]:
            if self.with_reapers:
                self.start_reaper(node)
            if self.with_stand_ins:
                self.agents[node] = self.spawn(node, stand_in_argv(), self.base / f"{node}.agent")

    def start_reaper(self, node: str) -> None:
        """A node's reaper; a restarted one logs to a new file (``<node>.reaper.<n>.log``)."""
        n = len(list(self.base.glob(f"{node}.reaper.*.log")))
        self.reapers[node] = self.spawn_argv(reaper_argv(self.nodes, node),
                                             self.base / f"{node}.reaper.{n}.log")

    def down(self) -> None:
        self.stop(timeout=3)
        super().down()  # also what a reaper restarted (node_crash) in the namespaces

    def link_addr(self, node: str, peer: str) -> str:
        end = next(e for e in self.state["nodes"][node]["links"] if e["peer"] == peer)
        return str(end["address"]).split("/")[0]

    def ping(self, src: str, dst_addr: str, count: int = 3, interval: float = 0.05,
             wait: float = 1.0) -> tuple[int, int]:
        """(received, sent). ``wait``: how long ping waits for the replies still out after
        its last send (a loaded host may run it late; replies never take long on a veth)."""
        out = netns.run(*netns.exec_argv(self.ns(src), "ping", "-n", "-q", "-c", str(count),
                                         "-i", str(interval), "-W", str(wait), dst_addr),
                        check=False).stdout
        for line in out.splitlines():
            if "transmitted" in line:
                parts = line.split()
                return int(parts[3]), int(parts[0])
        return 0, count

    def link_state(self, node: str, ifname: str) -> dict[str, Any]:
        found = netns.ip(self.ns(node), "-j", "link", "show", "dev", ifname)
        return dict(json.loads(found)[0])

    def leftovers(self) -> dict[str, list[str]]:
        return leftovers(self.nodes, list(self.state["nodes"]))

    def wait(self, pred: Any, timeout: float, step: float = 0.05) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            time.sleep(step)
        return bool(pred())
