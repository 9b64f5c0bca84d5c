"""The link side's timers on the mesh sockets: the hello tick and the per-neighbour deadline.

I/O only, under whichever link core the backend gives (:mod:`.backend`):
each hello tick reads what is queued, sends a hello on every open mesh
interface and an echo probe to every up neighbour where echo sockets are
open, then lets the core judge; a deadline that falls before the next tick
gets a timer of its own (BFD's per-session detection timer, RFC 5880
section 6.8.4). How late the tick fired goes to the hello-stretch policy
(:mod:`.stretch`), whose answer the hellos announce.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mesh_agent.link.sensor import Event, LinkSensor, Solicit
from mesh_agent.link.sockets import MeshSockets
from mesh_agent.link.stretch import HelloStretch
from mesh_agent.timers import every

log = logging.getLogger("mesh_agent")


class LinkTimer:
    def __init__(
        self,
        sensor: LinkSensor,
        sockets: MeshSockets,
        stretch: HelloStretch,
        interval_s: float,
        clock: Callable[[], float],
        on_events: Callable[[list[Event]], None],
        on_solicits: Callable[[list[Solicit]], None],
    ) -> None:
        self.sensor = sensor
        self.sockets = sockets
        self.stretch = stretch
        self.interval_s = interval_s
        self.clock = clock
        self.on_events = on_events
        self.on_solicits = on_solicits
        self._deadline: asyncio.TimerHandle | None = None
        self.last_tick: float | None = None  # the watchdog's proof of progress

    async def run(self) -> None:
        await every(self.clock, self.interval_s, self.tick, self.note_lag)

    def note_lag(self, late: float) -> None:
        stretch = self.stretch.timer_fired(late, self.clock())
        if stretch.started:
            log.warning("hello timer %.0f ms late: announcing a %.0f ms hello interval",
                        late * 1000, stretch.announced_s * 1000)
        self.sensor.advertised_interval_s = stretch.announced_s

    def drain(self) -> None:
        """Read every queued hello and echo reply (their silence, not our backlog)."""
        for ifname, (data, src, at, ttl) in self.sockets.hellos():
            try:
                self.on_events(self.sensor.receive(ifname, data, src, at, ttl))
            except Exception:  # the core never raises; this guards the caller's code
                self.sockets.guard("hello")
        for ifname, (data, _src, at, _ttl) in self.sockets.echo_replies():
            self.sensor.receive_echo(ifname, data, at)
        if solicits := self.sensor.take_solicits():
            self.on_solicits(solicits)

    def tick(self) -> None:
        # Read what is already queued before judging anyone dead: if this
        # process was descheduled, the neighbours' hellos are in our socket
        # buffers and the silence is ours, not theirs.
        self.drain()
        now = self.last_tick = self.clock()
        open_ = set(self.sockets.interfaces)
        for ifname in self.sensor.hello_interfaces():  # none on batman-adv: it senses links
            if ifname in open_ and self.sensor.hello_due(ifname, now):
                self.sockets.send_hello(ifname, self.sensor.build_hello(ifname, now))
        for ifname in self.sockets.echo_interfaces:
            for dest, probe in self.sensor.echo_requests(ifname, now):
                self.sockets.send_echo(ifname, probe, dest)
        # Judged on what the drain above read: the answers to these probes are
        # read at the next tick (or deadline), as a late hello would be.
        self.judge(now)

    def _deadline_reached(self) -> None:
        self.drain()
        self.judge(self.clock())

    def judge(self, now: float) -> None:
        """Kill silent neighbours, then arm a timer for a deadline before our next tick."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self.on_events(self.sensor.tick(now))
        deadline = self.sensor.next_deadline()
        if deadline is not None and deadline < now + self.interval_s:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_at(loop.time() + max(0.0, deadline - now) + 0.001,
                                          self._deadline_reached)
