"""The asyncio shell around the sans-I/O cores: sockets, timers, netlink, API.

Hellos and adverts share one UDP socket per mesh interface, bound to the
interface with SO_BINDTODEVICE. Hellos go to the all-hosts group 224.0.0.1
(RFC 1112: every multicast-capable interface is a member, so no join is
needed, and a /31 point-to-point link has no subnet broadcast) with
IP_MULTICAST_LOOP off: unlike a limited broadcast, our own hellos are not
looped back to us, which halved the receive work. Adverts are unicast to each
neighbour's link address on udp_port + 1, through a second socket per
interface. Only that advert socket wakes the event loop: the hello sockets
are drained once per hello tick, and each hello's arrival time comes from the
kernel (SO_TIMESTAMPNS), so batching costs RTT and liveness no accuracy. This
cut the wake-ups from one per received hello to one per tick. eth0 (the
management network) is never opened.

A third, raw ICMP socket per interface carries the echo probes of
:mod:`mesh_agent.link.sensor` (BFD's echo function): requests to each up
neighbour every hello tick, answered by the neighbour's kernel; ICMP_FILTER
lets only echo replies in, and it is drained with the hello socket. It needs
CAP_NET_RAW (in the unit); without it the agent logs once and stays on hello
timing.

Hostile input (the protocol rules live in the cores; this shell only moves
bytes): every UDP socket sends with TTL 255 and carries a classic BPF filter
that drops, in the kernel, any datagram that did not arrive with TTL 255 (GTSM,
RFC 5082; Linux does not apply IP_MINTTL to UDP), so traffic routed from two
hops away never reaches a queue; the TTL is also read (IP_RECVTTL) and checked
by the cores. The kernel's per-socket drop count is exported. Hello sockets
carry only hellos and advert sockets only adverts. Each read is bounded per
socket and per turn, and each datagram is handled inside its own guard, so no
input can stop a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime as dt
import gc
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from mesh_agent.api import create_app, guarded_server
from mesh_agent.config import AgentConfig
from mesh_agent.identity import Identity
from mesh_agent.identity.clock import ClockTrust
from mesh_agent.identity.hellokeys import HelloKeys
from mesh_agent.link.batman import BatmanSensor, batman_sensor, poll_batctl
from mesh_agent.link.sensor import Event, LinkSensor, NeighborDown, NeighborUp
from mesh_agent.metrics import Metrics
from mesh_agent.paths import PathTable
from mesh_agent.routes.netlink import Netlink
from mesh_agent.routes.programmer import NeighborLink, RouteProgrammer
from mesh_agent.routes.pyroute2_lean import RTMGRP_LINK, AsyncIPRoute
from mesh_agent.topology.lsdb import LinkStateDB, SeqStore

log = logging.getLogger("mesh_agent")

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
RTM_NEWLINK, RTM_DELLINK = 16, 17
HELLO_GROUP = "224.0.0.1"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
IP_TTL_CMSG = 2  # IP_TTL: the ancillary message IP_RECVTTL delivers
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_MEMINFO = 55
SK_MEMINFO_DROPS = 8
GTSM_TTL = 255
_TIMESPEC = struct.Struct("@qq")
_ANC_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(4)
# Datagrams read from one socket per turn (each wake-up or tick): enough for a
# neighbour table's worth of hellos, and a flooded socket cannot hold the loop.
READ_BUDGET = 64
# And at most this long on the advert socket per wake-up (signature checks cost
# 0.1-0.6 ms each): what is left is read on the loop's next turn, after timers.
ADVERT_TURN_S = 0.005
# Raw ICMP socket filter (linux/icmp.h): a set bit drops that ICMP type.
SOL_RAW, ICMP_FILTER = 255, 1
_ECHO_REPLY_ONLY = struct.pack("@I", 0xFFFFFFFF & ~(1 << 0))
MANAGEMENT_IFNAMES = frozenset({"eth0", "lo"})
# Housekeeping cadence (expiry, next-hop moves, counter sync), independent of
# the much slower periodic advert refresh.
HOUSEKEEPING_S = 1.0
# SPF back-off, a simplified RFC 8405: the first change after a quiet second
# is computed at once (remote nodes must reconverge fast when a backup is not
# loop-free), but a storm of changes (a flapping radio, a CPU-starved host) is
# batched with a hold that doubles per recompute up to SPF_HOLD_MAX_S.
SPF_QUIET_S = 1.0
# Hello stretching. When our own hello timer fires late, the host is starved
# and our peers' timers are probably late too: announce a longer interval (so
# peers wait longer before declaring us dead) instead of feeding a flap storm
# that starves the host further. Only a lag our peers could mistake for our
# death counts: a hello late by L arrives (1 interval + L) after the previous
# one, and peers give up after (dead_multiplier x interval), so a lag up to
# (dead_multiplier - 1) intervals is harmless and ignored. Never counted: the
# first STARTUP_GRACE_S (our own imports) and ordinary jitter (the first
# version stretched detection by a third on a quiet host; a later one, counting
# lags over one interval, stretched it on every CPU burst of a 50-agent lab,
# when all agents recompute at once after a cut). Announced = configured + 2 x
# the recent worst lag, at most HELLO_STRETCH_MAX x configured; the lag decays
# with a 1 s half-life, so detection is fast again once the host is quiet (a
# starved host keeps being late and keeps the stretch up; with 10 s, one CPU
# burst after a cut in the 50-agent bench still slowed detection of the next
# cut, 6 s later, to 0.8 s).
HELLO_STRETCH_MAX = 10.0
LAG_HALF_LIFE_S = 1.0
STARTUP_GRACE_S = 5.0
SPF_HOLD_MIN_S = 0.05
SPF_HOLD_MAX_S = 1.0


def _gtsm_filter() -> tuple[bytes, Any]:
    """A classic BPF socket filter that keeps only packets with IP TTL 255.

    ``ldb [SKF_NET_OFF + 8]`` loads the IPv4 TTL whatever the socket type;
    ``ret #0`` drops in the kernel before the datagram is queued (the drop is
    counted in the socket's SK_MEMINFO_DROPS).
    """
    skf_net_off = -0x100000
    insns = [
        (0x30, 0, 0, (skf_net_off + 8) & 0xFFFFFFFF),  # BPF_LD | BPF_B | BPF_ABS
        (0x15, 0, 1, GTSM_TTL),  # BPF_JMP | BPF_JEQ | BPF_K
        (0x06, 0, 0, 0xFFFFFFFF),  # BPF_RET | BPF_K: keep all of it
        (0x06, 0, 0, 0),  # drop
    ]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
    return struct.pack("HL", len(insns), ctypes.addressof(code)), code


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
    ) -> None:
        self.cfg = cfg
        self.identity = identity
        self.metrics = metrics or Metrics()
        self.metrics.watch_links(
            lambda: [(nb.ifname, nb.rtt_s, nb.loss()) for nb in self.sensor.up_neighbors()]
        )
        self.metrics.identity_cert_expiry.set(identity.cert.not_valid_after_utc.timestamp())
        self.clock = clock
        self.wall = wall
        addr = str(cfg.node_address)
        self.lsdb = LinkStateDB(identity, addr, cfg.advert_max_age_s, seq_store)
        self.hello_keys = HelloKeys(identity, self.lsdb.cert_of)
        self.sensor: LinkSensor = (
            batman_sensor(cfg)
            if cfg.link.backend == "batman"
            else LinkSensor(
                cfg.node_name,
                addr,
                cfg.hello_interval_s,
                cfg.dead_multiplier,
                keys=self.hello_keys,
                session=secrets.randbits(32),
            )
        )
        self.clock_trust = clock_trust or ClockTrust(
            cfg.clock_trust, max(c.not_valid_before_utc for c in identity.bundle)
        )
        self.paths = PathTable(cfg.node_name, k=cfg.k, disjoint=cfg.disjoint)
        self.routes = RouteProgrammer(None, cfg.route_protocol, addr)
        self._socks: dict[str, socket.socket] = {}  # hellos, drained per tick
        self._advert_socks: dict[str, socket.socket] = {}  # adverts, on a reader
        self._echo_socks: dict[str, socket.socket] = {}  # echo probes, drained per tick
        self._echo = cfg.link.echo and not isinstance(self.sensor, BatmanSensor)
        self._ifindex: dict[str, int] = {}
        self._dirty = asyncio.Event()
        self._stop = asyncio.Event()
        self._route_lock = asyncio.Lock()
        # Failovers in flight: the compute loop waits for none before it runs
        # a (CPU-bound) path update, so the failover's netlink requests are
        # never queued behind one on this event loop.
        self._failovers = 0
        self._failover_idle = asyncio.Event()
        self._failover_idle.set()
        # Neighbours already failed over because their own advert dropped us.
        self._advert_down: set[str] = set()
        self._computed_generation = -1
        self._generation = 0
        self._ipr: AsyncIPRoute | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Task[None]] = set()
        self.started_at = clock()
        self.last_failover: dict[str, Any] | None = None
        self.exit_code = 0
        self._hellos_seen = 0
        self._damped_seen = 0
        self._echo_seen = (0, 0)
        self._drops_seen: dict[str, int] = {}
        self._kernel_drops: dict[int, int] = {}  # socket fd -> SK_MEMINFO_DROPS seen
        self._errors_logged: set[str] = set()
        self._clock_logged = False
        self._route_errors_seen = 0
        self._last_links: dict[str, tuple[str, str]] = {}
        self._last_shape: object = None
        self._last_originated = -float("inf")
        self._last_compute = -float("inf")
        self._spf_hold = 0.0
        self._deadline: asyncio.TimerHandle | None = None
        self._lag = 0.0
        self._lag_at = clock()

    # -- readiness --------------------------------------------------------
    def converged(self) -> bool:
        return (
            bool(self.sensor.up_neighbors())
            and self.lsdb.has_own()
            and self._computed_generation == self._generation
            and self.routes.last_sync_ok
        )

    def readiness(self) -> dict[str, bool]:
        return {
            "neighbors_known": bool(self.sensor.up_neighbors()),
            "own_advert": self.lsdb.has_own(),
            "paths_current": self._computed_generation == self._generation,
            "routes_programmed": self.routes.last_sync_ok,
        }

    def stop(self) -> None:
        self._stop.set()

    # -- lifecycle --------------------------------------------------------
    async def run(self, serve_api: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self._ipr = AsyncIPRoute()
        if self.cfg.enforce:
            self.routes = RouteProgrammer(
                Netlink(self._ipr), self.cfg.route_protocol, str(self.cfg.node_address)
            )
            flushed = await self.routes.flush_own()
            if flushed:
                log.info(
                    "removed %d leftover routes/nexthops with proto %d",
                    flushed,
                    self.cfg.route_protocol,
                )
        for ifname in await self._discover_interfaces():
            await self._open_interface(ifname)
        # Build the API before the timers start: building it blocks the loop
        # long enough (100s of ms on a busy Pi) to make neighbours miss hellos.
        server, api_sockets = self._api_server() if serve_api else (None, [])
        self._update_clock_trust()
        self._originate(flood=False)
        self._mark_dirty()
        self._tasks = [
            loop.create_task(self._hello_loop(), name="hello"),
            loop.create_task(self._advert_loop(), name="advert"),
            loop.create_task(self._compute_loop(), name="compute"),
            loop.create_task(self._netlink_monitor(), name="netlink"),
        ]
        if isinstance(self.sensor, BatmanSensor):
            # batctl wants root; the kernel's generic netlink only CAP_NET_ADMIN.
            # Imported here: only a batman node pays for pyroute2's generic netlink,
            # and after routes.pyroute2_lean has deferred pyroute2's package __init__.
            from mesh_agent.link.batman_netlink import netlink_fetch

            batman = poll_batctl(
                self.sensor,
                self.cfg.link,
                self.clock,
                self._handle_events,
                netlink_fetch(self.cfg.link),
            )
            self._tasks.append(loop.create_task(batman, name="batman"))
        if server is not None:
            self._tasks.append(loop.create_task(server.serve(sockets=api_sockets), name="api"))
        for task in self._tasks:
            task.add_done_callback(self._task_done)
        # Everything imported and built so far lives as long as the process:
        # keep it out of the cyclic GC's generations so collections stay cheap.
        gc.collect()
        gc.freeze()
        log.info(
            "mesh-agent %s (%s) started in %s mode on %s",
            self.cfg.node_name,
            self.cfg.node_address,
            self.cfg.mode,
            ", ".join(self._socks) or "no interfaces yet",
        )
        try:
            await self._stop.wait()
        finally:
            await self._shutdown(server)
            for sock in api_sockets:
                sock.close()

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """A core task must never end on its own: stop, and let systemd restart us."""
        if self._stop.is_set() or task.cancelled():
            return
        exc = task.exception()
        log.critical(
            "task %s ended unexpectedly (%r); stopping", task.get_name(), exc, exc_info=exc
        )
        self.exit_code = 1
        self._stop.set()

    async def _shutdown(self, server: Any) -> None:
        if server is not None:
            server.should_exit = True
        for task in self._tasks:
            if task.get_name() != "api":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5)
        if self.cfg.enforce:
            async with self._route_lock:
                removed = await self.routes.flush_own()
            log.info("shutdown: removed %d routes/nexthops", removed)
        for ifname in list(self._socks):
            self._close_interface(ifname)
        if self._ipr is not None:
            self._ipr.close()
        if isinstance(self.routes.nl, Netlink):
            self.routes.nl.close()
        log.info("mesh-agent stopped")

    def _api_server(self) -> tuple[Any, list[socket.socket]]:
        return guarded_server(
            create_app(self),
            self.cfg.api_endpoints,
            lambda reason: self.metrics.api_refused.labels(reason).inc(),
        )

    # -- interfaces -------------------------------------------------------
    def _wanted(self, ifname: str) -> bool:
        if ifname in MANAGEMENT_IFNAMES:
            return False
        if self.cfg.interfaces is not None:
            return ifname in self.cfg.interfaces
        return ifname.startswith(self.cfg.interface_prefix)

    async def _discover_interfaces(self) -> list[str]:
        assert self._ipr is not None
        found = []
        async for link in await self._ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if name and self._wanted(name):
                self._ifindex[name] = link["index"]
                found.append(name)
        return sorted(found)

    def _bound_socket(self, ifname: str, port: int) -> socket.socket | None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            # GTSM (RFC 5082): send with TTL 255, accept only TTL 255 (below).
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, GTSM_TTL)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, GTSM_TTL)
            s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
            # batman-adv: adverts go to the limited broadcast (link/batman.py).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xC0)  # CS6, network control
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.bind(("0.0.0.0", port))
        except OSError as exc:
            s.close()
            log.warning("cannot open %s port %d: %s", ifname, port, exc)
            return None
        try:
            prog, _code = _gtsm_filter()  # the kernel copies the program at attach
            s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
        except OSError as exc:  # the TTL is still checked by the cores
            log.warning("no in-kernel TTL filter on %s port %d: %s", ifname, port, exc)
        s.setblocking(False)
        return s

    async def _open_interface(self, ifname: str) -> None:
        if ifname in self._socks:
            return
        hello = self._bound_socket(ifname, self.cfg.udp_port)
        advert = self._bound_socket(ifname, self.cfg.advert_port) if hello else None
        if hello is None or advert is None:
            if hello is not None:
                hello.close()
            return
        self._socks[ifname] = hello
        self._advert_socks[ifname] = advert
        echo = self._echo_socket(ifname) if self._echo else None
        if echo is not None:
            self._echo_socks[ifname] = echo
        self.sensor.add_interface(ifname)
        asyncio.get_running_loop().add_reader(advert.fileno(), self._on_readable, ifname, advert)
        log.info("listening for hellos on %s", ifname)

    def _echo_socket(self, ifname: str) -> socket.socket | None:
        """A raw ICMP socket on *ifname* that only lets echo replies in (None: no CAP_NET_RAW)."""
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        except PermissionError as exc:
            log.warning("no echo probes (%s): neighbours stay on hello timing", exc)
            self._echo = False
            return None
        try:
            s.setsockopt(SOL_RAW, ICMP_FILTER, _ECHO_REPLY_ONLY)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xC0)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError as exc:
            s.close()
            log.warning("cannot open echo socket on %s: %s", ifname, exc)
            return None
        s.setblocking(False)
        return s

    def _close_interface(self, ifname: str) -> None:
        hello = self._socks.pop(ifname, None)
        if hello is not None:
            self._kernel_drops.pop(hello.fileno(), None)
            hello.close()
        echo = self._echo_socks.pop(ifname, None)
        if echo is not None:
            echo.close()
        s = self._advert_socks.pop(ifname, None)
        if s is not None:
            self._kernel_drops.pop(s.fileno(), None)
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(s.fileno())
            s.close()

    def _send(self, ifname: str, data: bytes, dest: str, port: int | None = None) -> None:
        """Send on *ifname*'s hello socket; to the advert port unless *port* is given."""
        s = self._socks.get(ifname)
        if s is None:
            return
        try:
            s.sendto(data, (dest, self.cfg.advert_port if port is None else port))
        except OSError as exc:  # ENETDOWN while the link is down, EAGAIN under load
            log.debug("send on %s to %s failed: %s", ifname, dest, exc)

    # -- receive path -----------------------------------------------------
    def _on_readable(self, ifname: str, s: socket.socket) -> None:
        """Handle queued adverts (READ_BUDGET, ADVERT_TURN_S at most), each in its own guard."""
        started = time.perf_counter()
        for data, src, _at, ttl in self._recv_stamped(ifname, s):
            try:
                self._on_advert(ifname, data, src, ttl)
            except Exception:  # the cores never raise; this guards the shell's own code
                self._guard_failed("advert")
                self.metrics.adverts_rejected.labels("internal_error").inc()
            if time.perf_counter() - started > ADVERT_TURN_S:
                return

    def _guard_failed(self, what: str) -> None:
        if what not in self._errors_logged:
            self._errors_logged.add(what)
            log.exception("handling a %s failed; counted as internal_error", what)

    def _recv_stamped(
        self, ifname: str, s: socket.socket
    ) -> Iterator[tuple[bytes, str, float, int | None]]:
        """Up to READ_BUDGET datagrams of *s*: (data, source, arrival on our clock, IP TTL)."""
        now, wall = self.clock(), self.wall()
        for _ in range(READ_BUDGET):
            try:
                data, anc, _flags, addr = s.recvmsg(65535, _ANC_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("recv on %s: %s", ifname, exc)
                return
            at = now
            ttl: int | None = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack(payload[: _TIMESPEC.size])
                    # Kernel stamps are wall-clock: map onto the monotonic
                    # clock, and never into the future or past a clock step.
                    at = min(now, max(now - 10.0, now - (wall - sec - nsec / 1e9)))
                elif level == socket.IPPROTO_IP and kind == IP_TTL_CMSG and len(payload) >= 4:
                    ttl = struct.unpack("@i", payload[:4])[0]
            yield data, addr[0], at, ttl

    def _drain(self) -> None:
        """Read every queued hello and echo reply (their silence, not our backlog)."""
        for ifname, s in list(self._socks.items()):
            for data, src, at, ttl in self._recv_stamped(ifname, s):
                try:
                    self._dispatch(ifname, data, src, at, ttl)
                except Exception:
                    self._guard_failed("hello")
                    self.sensor.drops["internal_error"] += 1
        for ifname, s in list(self._echo_socks.items()):
            for data, _src, at, _ttl in self._recv_stamped(ifname, s):
                self.sensor.receive_echo(ifname, data, at)
        # Nodes that cannot authenticate us yet get our certificate (our advert).
        solicits = self.sensor.take_solicits()
        if solicits:
            own = self.lsdb.own_advert(self.clock())
            if own is not None:
                for sol in solicits:
                    self._send(sol.ifname, own, sol.link_address)

    def _dispatch(
        self,
        ifname: str,
        data: bytes,
        src: str,
        at: float | None = None,
        ttl: int | None = None,
    ) -> None:
        """One datagram from a hello socket (hellos only: anything else is malformed)."""
        if src == "0.0.0.0":  # sender's interface has no address yet: no usable next hop
            self.sensor.drops["no_source_address"] += 1
            return
        now = self.clock() if at is None else at
        self._handle_events(self.sensor.receive(ifname, data, src, now, ttl))

    def _on_advert(self, ifname: str, data: bytes, src: str, ttl: int | None = None) -> None:
        if src == str(self.cfg.node_address):  # our own broadcast (batman-adv), looped back
            return
        m = self.metrics
        m.adverts_rx.inc()
        result = self.lsdb.receive(data, self.clock(), f"{ifname}/{src}", ttl)
        if result.reason == "duplicate":
            m.adverts_duplicate.inc()
            return
        if not result.accepted:
            m.adverts_rejected.labels(result.reason or "malformed").inc()
            log.debug("advert from %s via %s rejected: %s", result.origin, ifname, result.reason)
            if result.reply is not None:  # the sender holds an older copy than ours
                self._send(ifname, result.reply, src)
            if result.reoriginate:  # our own advert from before, newer than ours
                self._originate(flood=True)
            return
        m.adverts_accepted.inc()
        # Flood (RFC 2328 s13.3): the link core says where (native: every up
        # neighbour but the one it came from; batman-adv: nowhere, all heard it).
        for out_if, dest in self.sensor.flood_targets((ifname, src)):
            self._send(out_if, data, dest)
        if isinstance(self.sensor, BatmanSensor):
            # batman-adv names neighbours by the address in their MAC (link/batman.py).
            self.sensor.set_addresses(self.lsdb.addresses())
        if result.topology_changed:
            self._check_back_link(result.origin)
            self._mark_dirty()

    def _check_back_link(self, origin: str | None) -> None:
        """Fail over at once when a neighbour's fresh advert no longer lists us.

        On a silent cut the two ends time out at different moments; the first
        floods an advert without the link, and it reaches the other end around
        the mesh well before that end's own timer fires. The link has then left
        the graph (edges need both ends), so the recompute would move the
        routes, but only after a path update and a full route sync. The
        prepared backups are switched now instead, as if the neighbour had
        timed out here.
        """
        if origin is None:
            return
        links = self.lsdb.links_of(origin)
        if links is None:
            return
        if self.cfg.node_name in links:
            self._advert_down.discard(origin)  # back again: the next one is a new failure
            return
        nb = self.sensor.best_links().get(origin)
        if nb is None or origin in self._advert_down:
            return
        if not self.paths.failover(origin):
            return  # nothing routed through it (yet): the recompute is enough
        self._advert_down.add(origin)
        log.info("neighbour %s no longer advertises us: failing over", origin)
        self._start_failover(
            NeighborDown(nb.ifname, origin, nb.link_address, "advert", self.clock())
        )

    # -- events -----------------------------------------------------------
    def _handle_events(self, events: list[Event]) -> None:
        if not events:
            return
        loop = asyncio.get_running_loop()
        # Failover first: its task takes the route lock and issues its netlink
        # requests on the next loop turn, ahead of the logging, re-origination
        # and recompute queued below.
        for ev in events:
            if isinstance(ev, NeighborDown) and ev.name not in self.sensor.best_links():
                self._start_failover(ev)
        for ev in events:
            self._advert_down.discard(ev.name)
            if isinstance(ev, NeighborUp):
                log.info("neighbour %s up on %s via %s", ev.name, ev.ifname, ev.link_address)
                # Database exchange: a fresh neighbour gets the whole LSDB now
                # rather than waiting for the periodic refresh.
                for out_if, dest in self.sensor.exchange_targets(ev):
                    for raw in self.lsdb.raw_adverts(self.clock()):
                        self._send(out_if, raw, dest)
            else:
                log.info("neighbour %s down on %s (%s)", ev.name, ev.ifname, ev.reason)
        self.metrics.neighbors_up.set(len(self.sensor.up_neighbors()))
        loop.call_soon(self._after_neighbor_change)

    def _start_failover(self, ev: NeighborDown) -> None:
        """Switch to the prepared backups of ev.name now: lookups and one netlink op.

        Synchronous (:meth:`RouteProgrammer.switch_now`): the kernel has
        switched when this returns, before anything else queued on the loop.
        A running route sync is asked to stop at its next operation; the
        recompute after this neighbour change runs a fresh one. After a
        carrier loss a task puts back the routes the kernel dropped (the
        standby routes carry the traffic meanwhile).
        """
        t0 = self.clock()
        moves = self.paths.failover(ev.name)
        self.routes.request_preempt()
        ops = self.routes.switch_now(ev.name, moves)
        switched = self.clock()
        self._failovers += 1
        self._failover_idle.clear()
        task = asyncio.get_running_loop().create_task(
            self._after_failover(ev, moves, ops, t0, switched)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _after_neighbor_change(self) -> None:
        self._originate(flood=True)
        self._mark_dirty()

    async def _after_failover(
        self, ev: NeighborDown, moves: dict[str, str], ops: int, t0: float, switched: float
    ) -> None:
        readd_ops = 0
        try:
            if ev.reason == "carrier":
                async with self._route_lock:
                    readd_ops = await self.routes.readd_flushed(ev.name, moves)
        finally:
            self._failovers -= 1
            if not self._failovers:
                self._failover_idle.set()
        readd_s = self.clock() - switched if ev.reason == "carrier" else 0.0
        duration = switched - ev.at
        self.metrics.failovers.inc()
        self.metrics.failover_seconds.observe(duration)
        self.last_failover = {
            "neighbor": ev.name,
            "reason": ev.reason,
            "destinations": len(moves),
            "kernel_ops": ops + readd_ops,
            "duration_seconds": duration,
            "queued_seconds": t0 - ev.at,
            "kernel_seconds": switched - t0,
            "readd_seconds": readd_s,
        }
        log.info(
            "failover from %s (%s): %d destinations to backups, %d kernel ops, %.3f ms "
            "(queued %.3f ms, lookup+kernel %.3f ms; %d routes put back in %.3f ms)",
            ev.name,
            ev.reason,
            len(moves),
            ops,
            duration * 1000,
            (t0 - ev.at) * 1000,
            (switched - t0) * 1000,
            readd_ops,
            readd_s * 1000,
        )

    def _mark_dirty(self) -> None:
        self._generation += 1
        self._dirty.set()

    def _originate(self, flood: bool) -> None:
        links = {name: nb.cost() for name, nb in self.sensor.best_links().items()}
        now = self.clock()
        raw, changed = self.lsdb.originate(links, now)
        self._last_originated = now
        self.metrics.adverts_originated.inc()
        if flood:
            # A sequence wrap's flush goes out before the advert that restarts the numbering.
            for out in [*self.lsdb.flushes(now), raw]:
                for ifname, dest in self.sensor.flood_targets():
                    self._send(ifname, out, dest)
        if changed:
            self._mark_dirty()

    # -- timers -----------------------------------------------------------
    async def _every(
        self,
        interval: float,
        fn: Callable[[], None],
        lag: Callable[[float], None] | None = None,
    ) -> None:
        next_at = self.clock()
        while True:
            if lag is not None:
                lag(self.clock() - next_at)
            try:
                fn()
            except Exception:  # a bug in one tick must not stop the timer
                log.exception("timer %s failed", getattr(fn, "__name__", fn))
            next_at += interval
            delay = next_at - self.clock()
            if delay < 0:  # overran: skip the missed ticks, keep cadence
                next_at = self.clock()
                delay = 0
            await asyncio.sleep(delay)

    async def _hello_loop(self) -> None:
        await self._every(self.cfg.hello_interval_s, self._hello_tick, self._note_lag)

    def _note_lag(self, late: float) -> None:
        """Stretch the announced hello interval while our timers run late."""
        now = self.clock()
        base = self.cfg.hello_interval_s
        harmless = (self.cfg.dead_multiplier - 1) * base
        if late <= harmless or now - self.started_at < STARTUP_GRACE_S:
            late = 0.0
        decayed = self._lag * 0.5 ** ((now - self._lag_at) / LAG_HALF_LIFE_S)
        self._lag, self._lag_at = max(late, decayed), now
        announced = min(HELLO_STRETCH_MAX * base, base + 2 * self._lag)
        if announced > 2 * base >= self.sensor.advertised_interval_s:
            log.warning(
                "hello timer %.0f ms late: announcing a %.0f ms hello interval",
                late * 1000,
                announced * 1000,
            )
        self.sensor.advertised_interval_s = announced
        self.metrics.hello_announced.set(announced)

    def _hello_tick(self) -> None:
        # Read what is already queued before judging anyone dead: if this
        # process was descheduled, the neighbours' hellos are sitting in our
        # socket buffers and the silence is ours, not theirs.
        self._drain()
        now = self.clock()
        hello_ifs = [i for i in self.sensor.hello_interfaces() if i in self._socks]
        for ifname in hello_ifs:
            hello = self.sensor.build_hello(ifname, now)
            self._send(ifname, hello, HELLO_GROUP, self.cfg.udp_port)
        self.metrics.hellos_tx.inc(len(hello_ifs))
        for ifname, s in list(self._echo_socks.items()):
            for dest, probe in self.sensor.echo_requests(ifname, now):
                try:
                    s.sendto(probe, (dest, 0))
                except OSError as exc:  # ENETDOWN while the link is down
                    log.debug("echo on %s to %s failed: %s", ifname, dest, exc)
        # Judged on what the drain above read: the answers to the probes just
        # sent are read at the next tick (or deadline), as a late hello would be.
        self._judge(now)

    def _check_dead(self) -> None:
        """The per-neighbour deadline timer: read what is queued, then judge."""
        self._drain()
        self._judge(self.clock())

    def _judge(self, now: float) -> None:
        """Kill silent neighbours, then arm a timer for a deadline before our next tick."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._handle_events(self.sensor.tick(now))
        deadline = self.sensor.next_deadline()
        if deadline is not None and deadline < now + self.cfg.hello_interval_s:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_at(
                loop.time() + max(0.0, deadline - now) + 0.001, self._check_dead
            )

    async def _advert_loop(self) -> None:
        await asyncio.sleep(HOUSEKEEPING_S)
        await self._every(HOUSEKEEPING_S, self._advert_tick)

    def _advert_tick(self) -> None:
        if self.clock() - self._last_originated >= self.cfg.advert_interval_s:
            self._originate(flood=True)
        # A neighbour may move to another interface or renumber its link
        # without any change in the graph; the next hops must follow.
        links = {n: (nb.ifname, nb.link_address) for n, nb in self.sensor.best_links().items()}
        if links != self._last_links:
            self._last_links = links
            self._mark_dirty()
        self._update_clock_trust()
        gone = self.lsdb.expire(self.clock())
        if gone:
            log.info("adverts expired: %s", ", ".join(gone))
            self._mark_dirty()
        m = self.metrics
        m.lsdb_size.set(len(self.lsdb))
        # Sync the counters kept by the sans-I/O cores into Prometheus.
        m.hellos_rx.inc(self.sensor.rx_total - self._hellos_seen)
        self._hellos_seen = self.sensor.rx_total
        m.neighbor_damped.inc(self.sensor.damped_total - self._damped_seen)
        self._damped_seen = self.sensor.damped_total
        m.echo_probes.labels("sent").inc(self.sensor.echo_tx_total - self._echo_seen[0])
        m.echo_probes.labels("answered").inc(self.sensor.echo_rx_total - self._echo_seen[1])
        self._echo_seen = (self.sensor.echo_tx_total, self.sensor.echo_rx_total)
        for reason, n in self.sensor.drops.items():
            if reason == "self":  # our own hello heard back: expected, not a drop
                continue
            seen = self._drops_seen.get(reason, 0)
            if n > seen:
                m.hellos_dropped.labels(reason).inc(n - seen)
                self._drops_seen[reason] = n
        self._count_kernel_drops()

    def _count_kernel_drops(self) -> None:
        """Datagrams the kernel dropped on our sockets (GTSM filter, full queue)."""
        for kind, socks in (("hello", self._socks), ("advert", self._advert_socks)):
            for s in list(socks.values()):
                try:
                    info = s.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (SK_MEMINFO_DROPS + 1))
                except OSError:
                    continue
                drops = struct.unpack_from("@I", info, 4 * SK_MEMINFO_DROPS)[0]
                seen = self._kernel_drops.get(s.fileno(), 0)
                if drops > seen:
                    self.metrics.socket_drops.labels(kind).inc(drops - seen)
                self._kernel_drops[s.fileno()] = drops

    def _update_clock_trust(self) -> None:
        """Check certificate validity windows only while the clock is trustworthy."""
        was = self.clock_trust.trusted
        now = dt.datetime.fromtimestamp(self.wall(), dt.UTC)
        try:
            synced = self.cfg.clock_sync_file.exists()
        except OSError:
            synced = False
        trusted = self.clock_trust.update(now, synced)
        self.identity.check_validity = trusted
        self.metrics.clock_trusted.set(1 if trusted else 0)
        if trusted != was or not self._clock_logged:
            self._clock_logged = True
            if trusted:
                log.info("clock trusted (%s): certificate validity checked", self.cfg.clock_trust)
            else:
                log.warning(
                    "clock not trusted (%s): certificate validity is not checked",
                    self.clock_trust.reason(now),
                )

    async def _compute_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self._spf_delay())
            await self._failover_idle.wait()
            self._dirty.clear()
            generation = self._generation
            try:
                await self._recompute()
            except Exception:
                log.exception("recompute failed")
                await asyncio.sleep(self.cfg.hello_interval_s)
                self._dirty.set()
                continue
            self._computed_generation = generation
            self.metrics.converged.set(1 if self.converged() else 0)
            if not self.routes.last_sync_ok:
                # A netlink operation failed (e.g. a gateway not yet on-link):
                # retry on the refresh cadence even if the topology stays put.
                asyncio.get_running_loop().call_later(HOUSEKEEPING_S, self._mark_dirty)

    def _spf_delay(self) -> float:
        """How long to wait before this recompute (0 unless changes keep coming)."""
        since = self.clock() - self._last_compute
        if since >= SPF_QUIET_S:
            self._spf_hold = 0.0
        else:
            self._spf_hold = min(SPF_HOLD_MAX_S, max(SPF_HOLD_MIN_S, 2 * self._spf_hold))
        self._last_compute = self.clock() + self._spf_hold
        return self._spf_hold

    async def _recompute(self) -> None:
        m = self.metrics
        graph = self.lsdb.graph()
        t0 = time.perf_counter()
        self.paths.update(graph)
        m.path_seconds.observe(time.perf_counter() - t0)
        shape = (
            frozenset(graph.nodes),
            frozenset((frozenset((a, b)), c) for a, b, c in graph.edges(data="cost")),
        )
        if shape != self._last_shape:
            self._last_shape = shape
            m.topology_changes.inc()
        m.topology_nodes.set(graph.number_of_nodes())
        m.topology_edges.set(graph.number_of_edges())
        for kind, value in self.paths.coverage().items():
            m.coverage.labels(kind).set(value)
        links = {
            name: NeighborLink(nb.ifname, self._ifindex.get(nb.ifname, 0), nb.link_address)
            for name, nb in self.sensor.best_links().items()
        }
        t1 = time.perf_counter()
        async with self._route_lock:
            t2 = time.perf_counter()
            await self.routes.sync(self.paths.choices(), self.lsdb.addresses(), links)
        t3 = time.perf_counter()
        if t3 - t0 > 0.25:
            log.info(
                "slow recompute: paths %.0f ms, route lock wait %.0f ms, route sync %.0f ms",
                (t1 - t0) * 1000,
                (t2 - t1) * 1000,
                (t3 - t2) * 1000,
            )
        m.routes_installed.set(self.routes.route_count())
        m.routes_standby.set(self.routes.standby_count())
        m.destinations.set(self.routes.route_count())
        m.route_errors.inc(self.routes.errors_total - self._route_errors_seen)
        self._route_errors_seen = self.routes.errors_total

    # -- netlink link events ----------------------------------------------
    async def _netlink_monitor(self) -> None:
        mon = AsyncIPRoute()
        try:
            await mon.bind(groups=RTMGRP_LINK)
            while True:
                async for msg in mon.get():
                    await self._on_link_msg(msg)
        finally:
            mon.close()

    async def _on_link_msg(self, msg: Any) -> None:
        name = msg.get_attr("IFLA_IFNAME")
        if not name or not self._wanted(name):
            return
        index = msg["index"]
        mtype = msg["header"]["type"]
        up = bool(msg["flags"] & IFF_UP) and bool(msg["flags"] & IFF_LOWER_UP)
        if mtype == RTM_DELLINK or not up:
            if name in self._socks:
                # The kernel has already dropped our nexthops on this device,
                # and the groups and routes that used only them.
                self.routes.forget_interface(index)
                events = self.sensor.carrier_lost(name, self.clock())
                if events:
                    log.info("carrier lost on %s", name)
                self._handle_events(events)
            if mtype == RTM_DELLINK:
                self._close_interface(name)
                self.sensor.remove_interface(name, self.clock())
                self._ifindex.pop(name, None)
            return
        self._ifindex[name] = index
        if name not in self._socks:
            await self._open_interface(name)
