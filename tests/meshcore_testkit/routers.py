"""Routing daemons on a netns lab: our agent, or babeld, on the same topology in the same run.

Shared by the benchmarks that compare them (bench_failover, bench_chaos): the
namespaces and links come from :class:`meshcore_tools.netns.NetnsLab` with the
lab's address plan; :meth:`RoutingLab.start_agent` starts the agent as its
unit does (enforce mode, 50 ms x 3 hellos) and :meth:`RoutingLab.start_babeld`
starts babeld with the given timers. :meth:`RoutingLab.stop` stops the daemons
and flushes what they left in the kernel, so the next one starts clean.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshcore_tools import netns

from meshcore_testkit.agents import agent_argv, agent_config, agent_env, unit_limits, write_config
from meshcore_testkit.pki import CA

# babeld's interface defaults per variant; "babeld-default" is babeld's own timers (hello
# 4 s on wired links). Wired links cost by "2 out of 3" hellos heard; wireless ones by ETX
# (babeld(8)), which a bench with lossy links compares against.
BABELD = {
    "babeld-h1.0": "type wired hello-interval 1 update-interval 4",
    "babeld-h0.2": "type wired hello-interval 0.2 update-interval 1",
    "babeld-default": "type wired",
    "babeld-wireless-h0.2": "type wireless hello-interval 0.2 update-interval 1",
}
# How the agent logs a neighbour's death: the reason in brackets.
DEATH = re.compile(r"neighbour \S+ down on \S+ \(([\w-]+)\)")
ROUTER_SYSCTLS = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
                  "net.ipv4.conf.default.rp_filter": "0"}


class RoutingLab(netns.NetnsLab):
    """Plain namespaces wired like the container lab, routing daemons inside."""

    def __init__(self, state: dict[str, Any], workdir: Path, prefix: str = "mcb") -> None:
        super().__init__(state, prefix, sysctls=ROUTER_SYSCTLS)
        self.workdir = workdir
        self.by_link_addr = {
            end["address"].split("/")[0]: name
            for name, n in state["nodes"].items()
            for end in n["links"]
        }
        self.argv: dict[str, list[str]] = {}  # how each node's daemon was started

    def stop(self, timeout: float = 5.0) -> list[int | None]:
        codes = super().stop(timeout)
        for name in self.state["nodes"]:  # whatever a daemon left behind
            ns = self.ns(name)
            netns.kill_inside(ns)  # a daemon a chaos fault restarted
            netns.ip(ns, "route", "flush", "proto", "babel", check=False)
            netns.ip(ns, "route", "flush", "proto", "77", check=False)
            netns.ip(ns, "nexthop", "flush", check=False)
        return codes

    def ifnames(self, node: str) -> list[str]:
        return [e["ifname"] for e in self.state["nodes"][node]["links"]]

    def next_hops(self) -> dict[str, dict[str, str | None]]:
        """Per node, per destination node: the next hop node its kernel uses (itself when
        local, None when unrouted). One ``ip -batch`` of route gets per namespace, in parallel."""
        names = {n["node_address"]: name for name, n in self.state["nodes"].items()}
        batch = "".join(f"route get {a}\n" for a in names)
        procs = {node: subprocess.Popen(
            netns.exec_argv(self.ns(node), "ip", "-j", "-force", "-batch", "-"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for node in self.state["nodes"]}
        out: dict[str, dict[str, str | None]] = {}
        for node, proc in procs.items():
            stdout, _ = proc.communicate(batch, timeout=30)
            hops: dict[str, str | None] = dict.fromkeys(self.state["nodes"])
            for line in stdout.splitlines():
                for r in json.loads(line or "[]"):
                    dst = names.get(r.get("dst", ""))
                    if dst is None:
                        continue
                    if r.get("type") == "local":
                        hops[dst] = node
                    elif r.get("gateway") in self.by_link_addr:
                        hops[dst] = self.by_link_addr[r["gateway"]]
            out[node] = hops
        return out

    def all_pairs_routed(self) -> bool:
        """Every node reaches every other by its kernel's next hops, without a loop."""
        hops = self.next_hops()
        for src in hops:
            for dst in hops:
                at, seen = src, {src}
                while at != dst:
                    nxt = hops[at].get(dst)
                    if nxt is None or nxt in seen:
                        return False
                    seen.add(nxt)
                    at = nxt
        return True

    def link_ifnames(self, a: str, b: str) -> tuple[str, str]:
        ia = next(e["ifname"] for e in self.state["nodes"][a]["links"] if e["peer"] == b)
        ib = next(e["ifname"] for e in self.state["nodes"][b]["links"] if e["peer"] == a)
        return ia, ib

    def agent_link_deaths(self) -> dict[str, int]:
        """Neighbour deaths the agents logged so far, by reason."""
        out: dict[str, int] = {}
        for path in self.workdir.glob("*.agent.log"):
            for m in DEATH.finditer(path.read_text(errors="replace")):
                out[m.group(1)] = out.get(m.group(1), 0) + 1
        return out

    def start_babeld(self, defaults: str) -> None:
        """babeld on every node with these interface defaults (a :data:`BABELD` value)."""
        conf = self.workdir / "babeld.conf"
        conf.write_text(
            f"default {defaults}\n"
            "redistribute local ip 10.77.0.0/16 ge 32\n"
            "redistribute local deny\nredistribute deny\n"
        )
        for node in self.state["nodes"]:
            run = self.workdir / node
            run.mkdir(exist_ok=True)
            (run / "babeld.pid").unlink(missing_ok=True)
            pid = run / "babeld.pid"
            argv = ["babeld", "-c", str(conf), "-I", str(pid),
                    "-S", str(run / "babeld.state"), *self.ifnames(node)]
            # A killed babeld leaves its pid file, and babeld refuses to start while it
            # exists ("creat(...): File exists"): a restart removes it first.
            self.argv[node] = ["sh", "-c", f"rm -f {shlex.quote(str(pid))}; exec "
                               + shlex.join(argv)]
            self.spawn(node, argv, self.workdir / f"{node}.babeld.log")

    def start_agent(self, ca: CA, overrides: Mapping[str, Any] | None = None) -> None:
        """The agent in enforce mode, 50 ms x 3 hellos, started as its unit starts it;
        *overrides*: config keys for every node (``{"mapek": {...}}``)."""
        for node, n in self.state["nodes"].items():
            d = self.workdir / node
            # The certificate binds the node address (IP SAN): the agent requires it.
            pki = ca.write(d / "pki", node, n["node_address"])
            cfg = agent_config(node, n["node_address"], pki, d, **(overrides or {}))
            argv = agent_argv(write_config(self.workdir / f"{node}.agent.yml", cfg))
            self.argv[node] = argv
            self.spawn(node, argv, self.workdir / f"{node}.agent.log", preexec_fn=unit_limits,
                       env=agent_env())
