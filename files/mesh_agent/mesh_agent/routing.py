"""Route programming on the event loop: the path computation loop and the failover switch.

The asyncio half of the agent's shell that drives :class:`PathTable` and
:class:`RouteProgrammer`. When to compute is :class:`ComputeSchedule`'s call,
when to fail over :class:`FailoverPolicy`'s; this only sequences the I/O:

- a failover is a plain call in the handler that saw the death (lookups and
  one netlink operation, :meth:`RouteProgrammer.switch_now`): the kernel has
  switched when it returns, before anything else queued on the loop;
- the compute loop never starts a (CPU-bound) path update while a failover's
  netlink requests are in flight, and route syncs and the routes a failover
  puts back take turns on one lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from mesh_agent.link.sensor import NeighborDown
from mesh_agent.routes.programmer import NeighborLink
from mesh_agent.store.events import EventKind, EventLog
from mesh_agent.view import AgentView

log = logging.getLogger("mesh_agent")

RETRY_S = 1.0  # a failed route sync is retried after this, even if nothing changes


class Routing:
    """Reads the cores through the view (``view.routes`` is replaced when enforce starts)."""

    # Remote detours (:meth:`detour`) are off. On rgg-50 they turned an admin cut's
    # outage from 11 / 22 ms (median / p95, local failover alone) into 118-200 /
    # 202-226 ms: the node at the cut had already repaired locally, and upstream nodes
    # moved to backups that are not loop-free, looping until their recompute
    # (docs/agent-scale.md). They need a rule for when the node at the removed link
    # cannot repair on its own before they can be on by default.
    remote_detours = False

    def __init__(self, view: AgentView, events: EventLog, hello_interval_s: float) -> None:
        self.view = view
        self.events = events
        self.hello_interval_s = hello_interval_s
        self.clock: Callable[[], float] = view.clock
        self.ifindex: dict[str, int] = {}
        self.lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._background: set[asyncio.Task[Any]] = set()

    def changed(self) -> None:
        """Something the paths depend on changed: compute (after the back-off)."""
        self.view.schedule.changed(self.clock())
        self._dirty.set()

    # -- the computation --------------------------------------------------
    async def compute_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.view.schedule.delay(self.clock()))
            await self._idle.wait()
            self._dirty.clear()
            generation = self.view.schedule.start()
            try:
                await self.recompute()
            except Exception:
                log.exception("recompute failed")
                await asyncio.sleep(self.hello_interval_s)
                self._dirty.set()
                continue
            self.view.schedule.finished(generation)
            if not self.view.routes.last_sync_ok:
                # A netlink operation failed (e.g. a gateway not yet on-link):
                # retry soon even if the topology stays put.
                asyncio.get_running_loop().call_later(RETRY_S, self.changed)

    async def recompute(self) -> None:
        t0 = time.perf_counter()
        self.view.paths.update(self.view.topology.graph())
        t1 = time.perf_counter()
        self.view.path_seconds.observe(t1 - t0)
        links = {name: NeighborLink(nb.ifname, self.ifindex.get(nb.ifname, 0), nb.link_address)
                 for name, nb in self.view.sensor.best_links().items()}
        async with self.lock:
            t2 = time.perf_counter()
            v = self.view
            await v.routes.sync(v.paths.choices(), v.topology.lsdb.addresses(), links)
        t3 = time.perf_counter()
        if t3 - t0 > 0.25:
            log.info("slow recompute: paths %.0f ms, route lock wait %.0f ms, route sync %.0f ms",
                     (t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000)

    # -- failover ---------------------------------------------------------
    @property
    def failovers_in_flight(self) -> int:
        return self._in_flight

    def back_link(self, origin: str, lists_us: bool) -> None:
        """A neighbour's advert changed the topology: fail over now if it dropped us
        (the policy's call: once per episode, and only when something routes through it)."""
        nb = self.view.sensor.best_links().get(origin)
        routed = nb is not None and not lists_us and bool(self.view.paths.failover(origin))
        if self.view.failover.advert(origin, lists_us, nb is not None, routed) and nb:
            log.info("neighbour %s no longer advertises us: failing over", origin)
            self.fail_over(NeighborDown(nb.ifname, origin, nb.link_address, "advert",
                                        self.clock()))

    def detour(self, origin: str, removed: tuple[tuple[str, str], ...]) -> None:
        """An advert took links out of the graph: move the destinations whose primary
        crossed them to their cached backups now (lookups, one netlink op each), before
        the recompute that the same advert scheduled."""
        if not self.remote_detours:
            return
        moves = self.view.paths.detours(removed)
        if not moves:
            return
        t0 = self.clock()
        self.view.routes.request_preempt()
        ops = self.view.routes.detour_now(moves)
        if ops:
            log.info("links %s gone (advert from %s): %d destinations detoured in %.3f ms",
                     ", ".join("-".join(link) for link in removed), origin, ops,
                     (self.clock() - t0) * 1000)

    def fail_over(self, ev: NeighborDown) -> None:
        """Switch ev.name's destinations to their prepared backups now: lookups, one netlink op.

        A running route sync is asked to stop at its next operation; after a
        carrier loss a task puts back the routes the kernel dropped (the standby
        routes carry the traffic meanwhile).
        """
        t0 = self.clock()
        moves = self.view.paths.failover(ev.name)
        self.view.routes.request_preempt()
        ops = self.view.routes.switch_now(ev.name, moves)
        switched = self.clock()
        self._in_flight += 1
        self._idle.clear()
        task = asyncio.get_running_loop().create_task(
            self._after(ev, moves, ops, t0, switched))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _after(
        self, ev: NeighborDown, moves: dict[str, str], ops: int, t0: float, switched: float
    ) -> None:
        readd = 0
        try:
            if ev.reason == "carrier":
                async with self.lock:
                    readd = await self.view.routes.readd_flushed(ev.name, moves)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        record: dict[str, Any] = {
            "neighbor": ev.name, "reason": ev.reason, "destinations": len(moves),
            "kernel_ops": ops + readd, "duration_seconds": switched - ev.at,
            "queued_seconds": t0 - ev.at, "kernel_seconds": switched - t0,
            "readd_seconds": self.clock() - switched if ev.reason == "carrier" else 0.0}
        self.view.failover.completed(record)
        log.info("failover from %s (%s): %d destinations to backups, %d kernel ops, %.3f ms "
                 "(queued %.3f ms, lookup+kernel %.3f ms; %d routes put back in %.3f ms)",
                 ev.name, ev.reason, len(moves), ops, record["duration_seconds"] * 1000,
                 record["queued_seconds"] * 1000, record["kernel_seconds"] * 1000, readd,
                 record["readd_seconds"] * 1000)
        self.events.append(EventKind.FAILOVER, ev.name, ev.reason, record)

    async def flush(self) -> int:
        """Remove every route and nexthop of ours (start and shutdown)."""
        async with self.lock:
            return await self.view.routes.flush_own()

    async def adopt(self) -> int:
        """Keep the routes a previous run left, until replaced or swept (a restart's hand-off)."""
        async with self.lock:
            return await self.view.routes.adopt()

    async def sweep(self) -> int:
        """Remove what :meth:`adopt` kept and no sync replaced."""
        async with self.lock:
            return await self.view.routes.sweep_stale()
