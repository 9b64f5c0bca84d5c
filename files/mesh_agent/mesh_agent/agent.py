"""The asyncio shell around the sans-I/O cores: it moves bytes and runs timers, nothing more.

Every rule lives in a core with its own tests; this file only carries their
inputs and outputs. The cores: link sensing (:mod:`.link.sensor`,
:mod:`.link.batman`), hello stretching (:mod:`.link.stretch`), flooding,
database exchange and back-link detection (:mod:`.topology.core`), when to
fail over (:mod:`.routes.failover`), when to compute (:mod:`.paths.schedule`),
readiness (:mod:`.view`), self-healing (:mod:`.mapek`, when ``mapek.enabled``).
The I/O around them: the mesh sockets
(:mod:`.link.sockets`), link changes from rtnetlink (:mod:`.link.carrier`),
the link backends' pollers (:mod:`.link.backend`), route programming
(:mod:`.routing`), the event log (:mod:`.store.events`), the API (:mod:`.api`),
systemd's readiness and watchdog (:mod:`.sdnotify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import mesh_agent
from mesh_agent.api_service import ApiService
from mesh_agent.config import AgentConfig
from mesh_agent.identity import Identity
from mesh_agent.identity.clock import ClockTrust, refresh
from mesh_agent.identity.export import ClientExport
from mesh_agent.identity.watch import IdentityWatcher
from mesh_agent.link.carrier import InterfaceFollower
from mesh_agent.link.sensor import Event, NeighborUp, Solicit
from mesh_agent.link.sockets import Datagram
from mesh_agent.link.timer import LinkTimer
from mesh_agent.mapek import Knowledge
from mesh_agent.mapek.shell import MapekShell
from mesh_agent.metrics import Metrics
from mesh_agent.routes.netlink import Netlink, NetlinkError
from mesh_agent.routes.programmer import RouteProgrammer
from mesh_agent.routes.pyroute2_lean import AsyncIPRoute
from mesh_agent.routing import Routing
from mesh_agent.sdnotify import Notifier
from mesh_agent.store.events import EventKind, EventLog
from mesh_agent.timers import every
from mesh_agent.topology.core import Send
from mesh_agent.topology.lsdb import SeqStore
from mesh_agent.view import AgentView

log = logging.getLogger("mesh_agent")

HOUSEKEEPING_S = 1.0  # refresh check, expiry, next-hop moves, clock trust, kernel drops
CHECKPOINT_S = 60.0  # the event log's WAL into its database, off the loop


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        identity: Identity,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        seq_store: SeqStore | None = None,
        clock_trust: ClockTrust | None = None,
        events: EventLog | None = None,
        knowledge: Knowledge | None = None,
        cpu: Callable[[], float] = time.process_time,
        notifier: Notifier | None = None,
    ) -> None:
        self.cfg, self.identity, self.clock, self.wall = cfg, identity, clock, wall
        self.view, self.link = AgentView.build(cfg, identity, clock, wall, seq_store,
                                               clock_trust, events)
        self.sensor, self.topology = self.view.sensor, self.view.topology
        self.events, self.sockets = self.view.events, self.view.sockets
        self.sockets.on_advert = self._on_advert
        self.routing = Routing(self.view, self.events, cfg.hello_interval_s)
        self.timer = LinkTimer(self.sensor, self.sockets, self.view.stretch, cfg.hello_interval_s,
                               clock, self._on_link_events, self._solicited)
        self.interfaces = InterfaceFollower(
            cfg.wants_interface, self.sockets, self.sensor, self.routing.ifindex,
            lambda index: self.view.routes.forget_interface(index), self._on_link_events, clock)
        self.mapek: MapekShell | None = None
        if cfg.mapek.enabled:
            self.mapek = MapekShell(cfg, self.view, self.events, knowledge or Knowledge(None),
                                    clock, wall, cpu, lambda: self._originate(flood=True),
                                    self._send, self._on_link_events)
        self.metrics = metrics or Metrics()
        self.metrics.bind(self.view)
        self._stop = asyncio.Event()
        self._ipr: AsyncIPRoute | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._watcher: IdentityWatcher | None = None
        self.api = ApiService(self._build_api, clock, enabled=False)
        self.exit_code = 0
        self.notifier = notifier or Notifier()
        self._sweeper: asyncio.Task[None] | None = None

    def stop(self) -> None:
        self._stop.set()

    def follow(self, watcher: IdentityWatcher, export: ClientExport | None = None) -> None:
        """Run ``watcher`` with the agent; on each rotation flood an advert under the new key
        (peers learn the new certificate now, not at the next refresh), and bring the
        exported client identity (*export*: the lease client's file) up to date."""
        self._watcher = self.view.watcher = watcher
        watcher.events = self.events

        def rotated() -> None:
            if export is not None:
                export.sync(self.identity)
            self._originate(flood=True)

        watcher.on_rotate = rotated
        if self.mapek is not None:
            self.mapek.follow_identity(watcher)

    # -- lifecycle --------------------------------------------------------
    async def run(self, serve_api: bool = True) -> None:
        self._ipr = AsyncIPRoute()
        grace = self.cfg.restart_grace_s
        adopted = 0
        if self.cfg.enforce:
            self.view.routes = RouteProgrammer(
                Netlink(self._ipr), self.cfg.route_protocol, str(self.cfg.node_address),
                self.clock)
            if grace > 0:
                # The previous run's routes keep this node forwarding until our syncs
                # replace them; whatever is left goes after the grace.
                if adopted := await self.routing.adopt():
                    log.info("kept %d routes of the previous run (proto %d): each until "
                             "replaced, the rest removed in %.0f s", adopted,
                             self.cfg.route_protocol, grace)
                    self._sweeper = asyncio.get_running_loop().create_task(
                        self._sweep_after(grace), name="sweep")
            elif flushed := await self.routing.flush():
                log.info("removed %d leftover routes/nexthops with proto %d", flushed,
                         self.cfg.route_protocol)
        else:
            # An enforce run before this one may have left its routes (restart_grace_s).
            await self._flush_enforce_leftovers()
        await self.interfaces.open_existing(self._ipr)
        # The API (FastAPI's import and the app: most of the agent's start-up CPU)
        # comes once the routing has settled (ApiPacing), built off the loop.
        self.api = ApiService(self._build_api, self.clock, enabled=serve_api)
        refresh(self.view.clock_trust, self.identity, self.wall(), self.cfg.clock_sync_file,
                start=True)
        self._originate(flood=False)
        self.events.record_start(version=mesh_agent.__version__, mode=self.cfg.mode,
                                 routes_adopted=adopted)
        jobs = {"hello": self.timer.run(), "housekeeping": self._housekeeping_loop(),
                "compute": self.routing.compute_loop(), "netlink": self.interfaces.follow(),
                "checkpoints": self._checkpoints(),
                **{f"poller{i}": poll(self._on_link_events)
                   for i, poll in enumerate(self.link.pollers)}}
        if self._watcher is not None:
            jobs["identity"] = self._watcher.run()
        if self.mapek is not None:
            jobs["mapek"] = self.mapek.run()
        if self.notifier.watchdog_s:
            jobs["watchdog"] = self._watchdog(self.notifier.watchdog_s)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(job, name=name) for name, job in jobs.items()]
        for task in self._tasks:
            task.add_done_callback(self._task_done)
        # Everything built so far lives as long as the process: keep it out of
        # the cyclic GC's generations so collections stay cheap.
        gc.collect()
        gc.freeze()
        log.info("mesh-agent %s (%s) started in %s mode on %s", self.cfg.node_name,
                 self.cfg.node_address, self.cfg.mode,
                 ", ".join(self.sockets.interfaces) or "no interfaces yet")
        self.notifier.send("READY=1", f"STATUS={self.cfg.mode} mode, routes adopted: {adopted}")
        try:
            await self._stop.wait()
        finally:
            self.api.stop()
            await self._shutdown()
            self.api.close()

    def _build_api(self) -> tuple[Any, list[Any]]:
        from mesh_agent.api import create_app, guarded_server  # FastAPI: the heavy import

        return guarded_server(
            create_app(self.view, self.metrics.registry, self.events),
            self.cfg.api_endpoints, lambda reason: self.view.api_refused.update([reason]))

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """A task must never end on its own: stop, and let systemd restart us."""
        if self._stop.is_set() or task.cancelled():
            return
        exc = task.exception()
        log.critical("task %s ended unexpectedly (%r); stopping", task.get_name(), exc,
                     exc_info=exc)
        self.exit_code = 1
        self._stop.set()

    async def _flush_enforce_leftovers(self) -> None:
        """Observe mode: remove the routes an enforce run left for its successor (it can
        be told only now that the successor will not take them over)."""
        assert self._ipr is not None
        nl = Netlink(self._ipr)
        try:
            flushed = await RouteProgrammer(nl, self.cfg.route_protocol, None).flush_own()
        except (NetlinkError, OSError) as exc:  # no nexthop objects in this kernel, ...
            log.warning("observe mode: could not look for an enforce run's routes: %s", exc)
            return
        finally:
            nl.close()
        if flushed:
            log.info("observe mode: removed %d routes/nexthops an enforce run left (proto %d)",
                     flushed, self.cfg.route_protocol)

    async def _sweep_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            removed = await self.routing.sweep()
        except (NetlinkError, OSError) as exc:  # the next start sweeps them (adopt)
            log.warning("restart grace over, but the sweep failed: %s", exc)
            return
        if removed:
            log.info("restart grace over: removed %d routes/nexthops of the previous run "
                     "that no sync replaced", removed)

    async def _shutdown(self) -> None:
        self.notifier.send("STOPPING=1")
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in self._tasks:
            if task.get_name() != "api":  # the API drains itself (should_exit)
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5)
        routes_left = 0
        if self.cfg.enforce and self.cfg.restart_grace_s > 0:
            routes_left = len(self.view.routes.installed())
            log.info("shutdown: left %d routes in the kernel for the next start to take over "
                     "(restart_grace_s %.0f)", routes_left, self.cfg.restart_grace_s)
        elif self.cfg.enforce:
            log.info("shutdown: removed %d routes/nexthops", await self.routing.flush())
        self.sockets.close_all()
        if self._ipr is not None:
            self._ipr.close()
        if self.view.routes.nl is not None:
            self.view.routes.nl.close()
        self.events.record_stop("error" if self.exit_code else "signal", code=self.exit_code,
                                routes_left=routes_left)
        self.events.close()
        if self.mapek is not None:
            self.mapek.close()
        log.info("mesh-agent stopped")

    # -- what arrives -----------------------------------------------------
    def _hops(self, came_from: tuple[str, str] | None = None) -> Iterator[tuple[str, str]]:
        """Where the link backend floods an advert (lazy: most adverts flood nowhere)."""
        yield from self.sensor.flood_targets(came_from)

    def _solicited(self, solicits: list[Solicit]) -> None:
        pairs = [(s.ifname, s.link_address) for s in solicits]
        self._send(self.topology.solicited(pairs, self.clock()))

    def _send(self, sends: Iterable[Send]) -> None:
        for s in sends:
            self.sockets.send_advert(s.ifname, s.data, s.dest)

    def _on_advert(self, ifname: str, datagram: Datagram) -> None:
        data, src, _at, ttl = datagram
        got = self.topology.received(ifname, src, data, self.clock(), ttl,
                                     self._hops((ifname, src)))
        self._send(got.sends)
        r = got.result
        if got.rejected:
            log.debug("advert from %s via %s rejected: %s", r.origin, ifname, r.reason)
            self.events.append(EventKind.ADVERT_REJECTED, r.origin or "", r.reason or "",
                               {"interface": ifname, "source": src})
        if r.reoriginate:  # our own advert from before, newer than ours
            self._originate(flood=True)
        if got.lists_us is not None and r.origin is not None:  # back-link detection
            self.routing.back_link(r.origin, got.lists_us)
        if got.removed and r.origin is not None:  # remote detours, before the recompute
            self.routing.detour(r.origin, got.removed)
        if got.changed:
            self.routing.changed()

    def _on_link_events(self, events: list[Event]) -> None:
        if not events:
            return
        # Failover first: its netlink requests go out before the logging,
        # re-origination and recompute queued below.
        for down in self.view.failover.neighbor_events(events, self.sensor.best_links()):
            self.routing.fail_over(down)
        for ev in events:
            if isinstance(ev, NeighborUp):
                log.info("neighbour %s up on %s via %s", ev.name, ev.ifname, ev.link_address)
                self._send(self.topology.neighbor_up(self.sensor.exchange_targets(ev),
                                                     self.clock()))
                self.events.append(EventKind.LINK_UP, ev.name, "", {"interface": ev.ifname})
            else:
                log.info("neighbour %s down on %s (%s)", ev.name, ev.ifname, ev.reason)
                self.events.append(EventKind.LINK_DOWN, ev.name, ev.reason,
                                   {"interface": ev.ifname})
        asyncio.get_running_loop().call_soon(self._after_neighbor_change)

    def _after_neighbor_change(self) -> None:
        self._originate(flood=True)
        self.routing.changed()  # next hops may move without any change in the graph

    def _originate(self, flood: bool) -> None:
        sends, changed = self.topology.originate(self.sensor.advert_costs(), self.clock(),
                                                 self._hops() if flood else ())
        self._send(sends)
        if changed:
            self.routing.changed()

    # -- timers -----------------------------------------------------------
    async def _housekeeping_loop(self) -> None:
        await asyncio.sleep(HOUSEKEEPING_S)
        await every(self.clock, HOUSEKEEPING_S, self._housekeeping)

    def _housekeeping(self) -> None:
        now = self.clock()
        if self.topology.refresh_due(now):
            self._originate(flood=True)
        if self.sensor.next_hops_moved():
            self.routing.changed()
        refresh(self.view.clock_trust, self.identity, self.wall(), self.cfg.clock_sync_file)
        if gone := self.topology.expire(now):
            log.info("adverts expired: %s", ", ".join(gone))
            self.routing.changed()
        self.sockets.count_kernel_drops()
        if task := self.api.poll(now, self.view.ready(), self.topology.changes_total):
            task.add_done_callback(self._task_done)
            self._tasks.append(task)

    async def _watchdog(self, interval: float) -> None:
        """systemd's watchdog, pinged every half interval while the hello timer ticks: a
        blocked loop or a stuck timer stops the pings, and systemd restarts the agent."""

        def ping() -> None:
            last = self.timer.last_tick
            if last is not None and self.clock() - last <= interval / 2:
                self.notifier.send("WATCHDOG=1")

        await every(self.clock, interval / 2, ping)

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_S)
            await asyncio.to_thread(self.events.checkpoint)
