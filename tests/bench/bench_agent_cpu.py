#!/usr/bin/env python3
"""bench_agent_cpu: where an agent's CPU goes, per phase, on a whole mesh replayed in one process.

Every node of the topology gets the agent's real cores (``LinkSensor`` with
``HelloKeys``, ``TopologyCore`` over a ``LinkStateDB`` with real certificates
and ECDSA signatures, ``ComputeSchedule``, ``PathTable``), wired as the shell
wires them (:mod:`mesh_agent.agent`), on a virtual clock: hellos every
``hello_interval_ms`` on each link, adverts flooded hop by hop with a 0.2 ms
link delay, database exchange on neighbour up, solicitations, origination on
every neighbour change, the refresh, and the SPF back-off deciding when paths
are computed. No sockets, no netlink, no asyncio: the figures are the cores'
CPU only (what the shell adds, syscalls and the event loop, is not in them),
and the virtual times are protocol latency on an infinitely fast CPU.

Phases (virtual time; CPU is ``time.process_time`` summed per category and
divided by nodes and virtual seconds, so ``pct_core`` is the share of one core
that an average agent spends there):

  start   every agent starts at once until every node routes to every other
  idle    --idle seconds after that (includes the advert refresh)
  cut     a silent cut of one link (hellos and adverts dropped both ways) and
          --cut seconds after it: detection, back-link failover, floods, recompute

``--profile FILE`` also writes a cProfile of the whole run. One JSON line per
figure on stdout. Echo probes are answered by the peer "kernel" (an ICMP echo
reply built here, no agent CPU), so neighbours go to echo mode as in a mesh.
"""

from __future__ import annotations

import argparse
import cProfile
import heapq
import itertools
import json
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mesh_agent.identity.hellokeys import HelloKeys
from mesh_agent.link.sensor import Event, LinkSensor, NeighborUp
from mesh_agent.link.wire import _inet_checksum
from mesh_agent.paths import PathTable
from mesh_agent.paths.schedule import ComputeSchedule
from mesh_agent.topology.core import Send, TopologyCore
from mesh_agent.topology.lsdb import LinkStateDB
from meshcore_testkit.pki import CA
from meshcore_tools.lab import topology as topo

DELAY = 0.0002  # one link's delay
ADVERT_INTERVAL_S = 10.0
MAX_AGE_S = 60.0


@dataclass
class Clock:
    now: float = 0.0
    queue: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    seq: itertools.count = field(default_factory=itertools.count)  # type: ignore[type-arg]

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.queue, (t, next(self.seq), fn))

    def run_until(self, t: float, stop: Callable[[], bool] = lambda: False) -> bool:
        while self.queue and self.queue[0][0] <= t:
            when, _, fn = heapq.heappop(self.queue)
            self.now = when
            fn()
            if stop():
                return True
        self.now = t
        return False


class Cpu:
    """process_time per category (a stack, so nested work is not counted twice)."""

    def __init__(self) -> None:
        self.spent: Counter[str] = Counter()
        self.count: Counter[str] = Counter()
        self._stack: list[tuple[str, float]] = []
        # What one measurement costs by itself (process_time is a system call):
        # subtracted per call from what is reported.
        for _ in range(2000):
            self.run("calibration", int)
        self.overhead = self.spent.pop("calibration") / self.count.pop("calibration")

    def net(self, what: str) -> float:
        return max(0.0, self.spent[what] - self.overhead * self.count[what])

    def run(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        t = time.process_time()
        if self._stack:
            outer, t0 = self._stack[-1]
            self.spent[outer] += t - t0
        self._stack.append((what, t))
        try:
            return fn(*args)
        finally:
            end = time.process_time()
            self.spent[what] += end - self._stack.pop()[1]
            self.count[what] += 1
            if self._stack:
                self._stack[-1] = (self._stack[-1][0], end)


class Node:
    def __init__(self, mesh: Mesh, name: str, n: dict[str, Any], identity: Any) -> None:
        self.mesh, self.name, self.clock, self.cpu = mesh, name, mesh.clock, mesh.cpu
        self.lsdb = LinkStateDB(identity, n["node_address"], MAX_AGE_S)
        self.topology = TopologyCore(self.lsdb, ADVERT_INTERVAL_S)
        self.sensor = LinkSensor(
            name,
            n["node_address"],
            mesh.hello_s,
            3,
            keys=HelloKeys(identity, self.lsdb.cert_of),
            session=random.getrandbits(32),
        )
        self.schedule = ComputeSchedule()
        self.paths = PathTable(name, k=3)
        self.ifaces = {e["ifname"]: e for e in n["links"]}
        for ifname in self.ifaces:
            self.sensor.add_interface(ifname)
        self.compute_pending = False
        self.next_refresh = 0.0

    # -- the shell's wiring (mesh_agent.agent.Agent), on the virtual clock --------------
    def start(self) -> None:
        self.cpu.run("originate", self._originate, False)
        phase = random.random() * self.mesh.hello_s
        self.clock.at(self.clock.now + phase, self._tick)
        self.clock.at(self.clock.now + 1.0, self._housekeeping)

    def _tick(self) -> None:
        now = self.clock.now
        for ifname in self.sensor.hello_interfaces():
            if getattr(self.sensor, "hello_due", lambda i, t: True)(ifname, now):
                data = self.cpu.run("hello_build", self.sensor.build_hello, ifname, now)
                self.mesh.deliver_hello(self, ifname, data)
        for ifname in self.ifaces:
            probes = self.cpu.run("echo_build", self.sensor.echo_requests, ifname, now)
            if self.mesh._peer(self, ifname) is not None:  # the peer's kernel answers
                for _dest, probe in probes:
                    reply = kernel_reply(probe)
                    self.clock.at(now + 2 * DELAY, lambda i=ifname, r=reply: self.cpu.run(
                        "echo_rx", self.sensor.receive_echo, i, r, self.clock.now))
        self._events(self.cpu.run("hello_judge", self.sensor.tick, now))
        self.clock.at(now + self.mesh.hello_s, self._tick)

    def _housekeeping(self) -> None:
        now = self.clock.now
        if self.topology.refresh_due(now):
            self.cpu.run("originate", self._originate, True)
        if self.cpu.run("housekeeping", self.sensor.next_hops_moved):
            self._changed()
        if self.cpu.run("housekeeping", self.topology.expire, now):
            self._changed()
        self.clock.at(now + 1.0, self._housekeeping)

    def hello_in(self, ifname: str, data: bytes, src: str) -> None:
        now = self.clock.now
        self._events(self.cpu.run("hello_rx", self.sensor.receive, ifname, data, src, now, 255))
        if solicits := self.sensor.take_solicits():
            pairs = [(s.ifname, s.link_address) for s in solicits]
            self._send(self.topology.solicited(pairs, now))

    def advert_in(self, ifname: str, data: bytes, src: str) -> None:
        now = self.clock.now
        got = self.cpu.run(
            "advert_rx",
            self.topology.received,
            ifname,
            src,
            data,
            now,
            255,
            self.sensor.flood_targets((ifname, src)),
        )
        self.mesh.verdicts[got.result.reason or "accepted"] += 1
        self._send(got.sends)
        if got.result.reoriginate:
            self.cpu.run("originate", self._originate, True)
        if got.changed:
            self._changed()

    def _events(self, events: Iterable[Event]) -> None:
        events = list(events)
        if not events:
            return
        for ev in events:
            self.mesh.link_events[type(ev).__name__] += 1
            if isinstance(ev, NeighborUp):
                sends = self.cpu.run(
                    "exchange",
                    self.topology.neighbor_up,
                    self.sensor.exchange_targets(ev),
                    self.clock.now,
                )
                self._send(sends)
        self.clock.at(
            self.clock.now,
            lambda: (self.cpu.run("originate", self._originate, True), self._changed()),
        )

    def _originate(self, flood: bool) -> None:
        links = {name: nb.cost() for name, nb in self.sensor.best_links().items()}
        hops = self.sensor.flood_targets() if flood else ()
        sends, changed = self.topology.originate(links, self.clock.now, hops)
        self._send(sends)
        if changed:
            self._changed()

    def _send(self, sends: Iterable[Send]) -> None:
        for s in sends:
            self.mesh.deliver_advert(self, s.ifname, s.data)

    def _changed(self) -> None:
        self.schedule.changed(self.clock.now)
        if not self.compute_pending:
            self.compute_pending = True
            delay = self.schedule.delay(self.clock.now)
            self.clock.at(self.clock.now + delay, self._compute)

    def _compute(self) -> None:
        self.compute_pending = False
        generation = self.schedule.start()
        self.cpu.run("path_update", self._path_update)
        self.schedule.finished(generation)
        if not self.schedule.current:
            self._changed()

    def _path_update(self) -> None:
        self.paths.update(self.cpu.run("graph", self.topology.graph))
        self.cpu.run("route_choices", self.paths.choices)


def kernel_reply(request: bytes) -> bytes:
    """The ICMP echo reply a neighbour's kernel sends, as the raw socket reads it."""
    icmp = bytearray(request)
    icmp[0] = 0
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", _inet_checksum(bytes(icmp)))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(icmp), 1, 0, 64, 1, 0,
                     bytes(4), bytes(4))
    return ip + bytes(icmp)


class Mesh:
    def __init__(self, state: dict[str, Any], hello_ms: int, seed: int) -> None:
        random.seed(seed)
        self.state = state
        self.clock = Clock()
        self.cpu = Cpu()
        self.hello_s = hello_ms / 1000.0
        self.verdicts: Counter[str] = Counter()
        self.link_events: Counter[str] = Counter()
        self.cut: set[frozenset[tuple[str, str]]] = set()
        ca = CA.create("bench CA")
        self.nodes = {
            name: Node(self, name, n, ca.identity(name, n["node_address"]))
            for name, n in state["nodes"].items()
        }

    def _peer(self, node: Node, ifname: str) -> tuple[Node, str, str] | None:
        e = node.ifaces[ifname]
        peer = self.nodes[e["peer"]]
        peer_if = next(i for i, pe in peer.ifaces.items() if pe["peer"] == node.name)
        if frozenset(((node.name, ifname), (peer.name, peer_if))) in self.cut:
            return None
        return peer, peer_if, e["address"].split("/")[0]

    def deliver_hello(self, node: Node, ifname: str, data: bytes) -> None:
        if (p := self._peer(node, ifname)) is not None:
            peer, peer_if, src = p
            self.clock.at(self.clock.now + DELAY, lambda: peer.hello_in(peer_if, data, src))

    def deliver_advert(self, node: Node, ifname: str, data: bytes) -> None:
        if (p := self._peer(node, ifname)) is not None:
            peer, peer_if, src = p
            self.clock.at(self.clock.now + DELAY, lambda: peer.advert_in(peer_if, data, src))

    def all_routed(self) -> bool:
        n = len(self.nodes) - 1
        return all(
            len(node.paths._choices) == n and node.schedule.current for node in self.nodes.values()
        )

    def cut_link(self, a: str, b: str) -> None:
        ia = next(i for i, e in self.nodes[a].ifaces.items() if e["peer"] == b)
        ib = next(i for i, e in self.nodes[b].ifaces.items() if e["peer"] == a)
        self.cut.add(frozenset(((a, ia), (b, ib))))


def emit(**fields: Any) -> None:
    print(json.dumps({"bench": "agent_cpu", **fields}), flush=True)


def phase(mesh: Mesh, name: str, seconds: float, wall: float, spec: str) -> None:
    n = len(mesh.nodes)
    total = sum(mesh.cpu.net(what) for what in mesh.cpu.spent)
    emit(
        topology=spec,
        phase=name,
        figure="cpu_per_agent_pct_core",
        value=round(100 * total / n / seconds, 3),
        overhead_us=round(1e6 * mesh.cpu.overhead, 2),
        virtual_s=round(seconds, 3),
        wall_s=round(wall, 2),
    )
    for what, _ in mesh.cpu.spent.most_common():
        spent = mesh.cpu.net(what)
        emit(
            topology=spec,
            phase=name,
            figure="cpu_by_part",
            part=what,
            pct_core=round(100 * spent / n / seconds, 4),
            share=round(spent / total, 4),
            calls=mesh.cpu.count[what],
            us_per_call=round(1e6 * spent / max(1, mesh.cpu.count[what]), 1),
        )
    emit(
        topology=spec,
        phase=name,
        figure="events",
        adverts=dict(mesh.verdicts),
        links=dict(mesh.link_events),
        path_updates=sum(x.schedule.computations_total for x in mesh.nodes.values()),
    )
    mesh.cpu.spent.clear()
    mesh.cpu.count.clear()
    mesh.verdicts.clear()
    mesh.link_events.clear()
    for x in mesh.nodes.values():
        x.schedule.computations_total = 0


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--topology", default="ringtree:72")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--hello-ms", type=int, default=50)
    p.add_argument("--idle", type=float, default=20.0)
    p.add_argument("--cut", type=float, default=3.0)
    p.add_argument("--max-start", type=float, default=60.0)
    p.add_argument("--profile", help="write a cProfile of the whole run here")
    a = p.parse_args()
    kind, n = a.topology.split(":")
    state = topo.normalise(topo.build(kind, int(n), seed=a.seed))
    mesh = Mesh(state, a.hello_ms, a.seed)
    prof = cProfile.Profile() if a.profile else None
    if prof:
        prof.enable()
    w0 = time.perf_counter()
    for node in mesh.nodes.values():
        node.start()
    done = mesh.clock.run_until(a.max_start, mesh.all_routed)
    start_s = mesh.clock.now
    emit(
        topology=a.topology,
        figure="start_all_routed_virtual_s",
        value=round(start_s, 3) if done else None,
        nodes=len(mesh.nodes),
    )
    phase(mesh, "start", start_s, time.perf_counter() - w0, a.topology)
    w0, t0 = time.perf_counter(), mesh.clock.now
    mesh.clock.run_until(t0 + a.idle)
    phase(mesh, "idle", a.idle, time.perf_counter() - w0, a.topology)
    # The middle link of the longest shortest path (as bench_failover cuts it).
    g = topo.build(kind, int(n), seed=a.seed).graph()
    import networkx as nx

    import_paths = dict(nx.all_pairs_shortest_path(g))
    src, dst = max(
        ((u, v) for u in import_paths for v in import_paths[u]),
        key=lambda q: (len(import_paths[q[0]][q[1]]), q),
    )
    path = import_paths[src][dst]
    mid = (len(path) - 1) // 2
    w0, t0 = time.perf_counter(), mesh.clock.now
    mesh.cut_link(path[mid], path[mid + 1])
    mesh.clock.run_until(t0 + a.cut)
    emit(topology=a.topology, figure="cut", link=[path[mid], path[mid + 1]])
    phase(mesh, "cut", a.cut, time.perf_counter() - w0, a.topology)
    if prof:
        prof.disable()
        prof.dump_stats(a.profile)


if __name__ == "__main__":
    sys.exit(main())
