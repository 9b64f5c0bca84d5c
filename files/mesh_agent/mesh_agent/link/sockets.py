"""The mesh interfaces' sockets: the I/O under the link and topology cores.

Hellos and adverts use one UDP socket each per mesh interface, bound to the
interface with SO_BINDTODEVICE. Hellos go to the all-hosts group 224.0.0.1
(RFC 1112: every multicast-capable interface is a member, so no join is
needed, and a /31 point-to-point link has no subnet broadcast) with
IP_MULTICAST_LOOP off, so our own hellos are not looped back. Adverts are
unicast to each neighbour's link address on the advert port (hello port + 1).
Only the advert socket wakes the event loop (:meth:`MeshSockets.open` puts a
reader on it); the hello sockets are drained once per hello tick, and each
datagram's arrival time comes from the kernel (SO_TIMESTAMPNS), so batching
costs RTT and liveness no accuracy.

A raw ICMP socket per interface carries the echo probes of
:mod:`mesh_agent.link.sensor` (BFD's echo function): ICMP_FILTER lets only
echo replies in (and an in-kernel BPF filter only ours), and it is drained with the
hello socket. It needs
CAP_NET_RAW; without it the adapter logs once and the neighbours stay on
hello timing.

Hostile input: every UDP socket sends with TTL 255 and carries a classic BPF
filter that drops, in the kernel, any datagram that did not arrive with TTL
255 (GTSM, RFC 5082; Linux does not apply IP_MINTTL to UDP); the TTL is also
read (IP_RECVTTL) and checked by the cores. The kernel's per-socket drop
counts are kept for the metrics. Each read is bounded per socket and per
turn, and each datagram is handled inside its own guard, so no input can
stop a timer. Nothing here decides anything about the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from mesh_agent.link.wire import ECHO_MAGIC

log = logging.getLogger("mesh_agent.link")

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

# (data, source address, arrival on our monotonic clock, IP TTL or None)
Datagram = tuple[bytes, str, float, int | None]


def _bpf_program(insns: list[tuple[int, int, int, int]]) -> tuple[bytes, Any]:
    """A classic BPF program for SO_ATTACH_FILTER (struct sock_fprog) and the buffer it
    points into, which must outlive the setsockopt call."""
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
    return struct.pack("HL", len(insns), ctypes.addressof(code)), code


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
    return _bpf_program(insns)


def _echo_filter() -> tuple[bytes, Any]:
    """A classic BPF socket filter that keeps only our own echo replies: ICMP packets
    whose payload starts with :data:`~mesh_agent.link.wire.ECHO_MAGIC`.

    A raw ICMP socket gets a copy of every echo reply the node receives on its
    interface, so without it every ping the node itself sends (an operator's, a
    monitoring probe's, a flood) queues in our socket beside our probes' answers and
    takes the read budget of a tick: on a starved host, our own answers then wait
    behind them past the echo dead time and a live link is declared dead (a ``ping -f``
    from the node did it within seconds: test_integration_netns.py).
    ``ldxb 4*([SKF_NET_OFF]&0xf)`` loads the IPv4 header length,
    ``ld [x + SKF_NET_OFF + 8]`` the first word after the ICMP header.
    """
    skf_net_off = -0x100000
    insns = [
        (0xB1, 0, 0, skf_net_off & 0xFFFFFFFF),  # BPF_LDX | BPF_B | BPF_MSH
        (0x40, 0, 0, (skf_net_off + 8) & 0xFFFFFFFF),  # BPF_LD | BPF_W | BPF_IND
        (0x15, 0, 1, int.from_bytes(ECHO_MAGIC, "big")),  # BPF_JMP | BPF_JEQ | BPF_K
        (0x06, 0, 0, 0xFFFFFFFF),  # keep
        (0x06, 0, 0, 0),  # drop
    ]
    return _bpf_program(insns)


def udp_socket(ifname: str, port: int) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        # batman-adv: adverts go to the limited broadcast (link/batman.py).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        # GTSM (RFC 5082): send with TTL 255, accept only TTL 255 (below).
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, GTSM_TTL)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, GTSM_TTL)
        s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
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


def echo_socket(ifname: str) -> socket.socket | None:
    """A raw ICMP socket on *ifname* that only lets our own echo replies in (ICMP_FILTER
    for the type, :func:`_echo_filter` for the payload).

    Raises PermissionError without CAP_NET_RAW; None when it cannot be set up.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        s.setsockopt(SOL_RAW, ICMP_FILTER, _ECHO_REPLY_ONLY)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xC0)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError as exc:
        s.close()
        log.warning("cannot open echo socket on %s: %s", ifname, exc)
        return None
    try:
        prog, _code = _echo_filter()
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
    except OSError as exc:  # the sensor still ignores foreign replies, after reading them
        log.warning("no in-kernel echo filter on %s: %s", ifname, exc)
    s.setblocking(False)
    return s


class MeshSockets:
    """The hello, advert and echo sockets of every open mesh interface.

    ``on_advert(ifname, datagram)`` is called from the event loop for each
    queued advert; hellos and echo replies are read with :meth:`hellos` and
    :meth:`echo_replies` when the caller wants them.
    """

    def __init__(
        self,
        udp_port: int,
        advert_port: int,
        echo: bool,
        clock: Callable[[], float],
        wall: Callable[[], float],
        on_advert: Callable[[str, Datagram], None] | None = None,
    ) -> None:
        self.udp_port = udp_port
        self.advert_port = advert_port
        self.echo = echo
        self.clock = clock
        self.wall = wall
        self.on_advert = on_advert or (lambda ifname, datagram: None)
        self._hello: dict[str, socket.socket] = {}
        self._advert: dict[str, socket.socket] = {}
        self._echo: dict[str, socket.socket] = {}
        self.kernel_drops: Counter[str] = Counter({"hello": 0, "advert": 0})
        self._drops_seen: dict[int, int] = {}  # socket fd -> SK_MEMINFO_DROPS seen
        self.guard_errors: Counter[str] = Counter()  # datagrams whose handling raised
        self._logged: set[str] = set()

    @property
    def interfaces(self) -> list[str]:
        return sorted(self._hello)

    @property
    def echo_interfaces(self) -> list[str]:
        return sorted(self._echo)

    def open(self, ifname: str) -> bool:
        """Open ``ifname``'s sockets (True when they are, or were, open)."""
        if ifname in self._hello:
            return True
        hello = udp_socket(ifname, self.udp_port)
        advert = udp_socket(ifname, self.advert_port) if hello else None
        if hello is None or advert is None:
            if hello is not None:
                hello.close()
            return False
        self._hello[ifname], self._advert[ifname] = hello, advert
        if self.echo:
            try:
                echo = echo_socket(ifname)
            except PermissionError as exc:
                log.warning("no echo probes (%s): neighbours stay on hello timing", exc)
                self.echo, echo = False, None
            if echo is not None:
                self._echo[ifname] = echo
        asyncio.get_running_loop().add_reader(advert.fileno(), self._adverts_readable, ifname)
        return True

    def close(self, ifname: str) -> None:
        for table in (self._hello, self._echo, self._advert):
            s = table.pop(ifname, None)
            if s is None:
                continue
            self._drops_seen.pop(s.fileno(), None)
            if table is self._advert:
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_reader(s.fileno())
            s.close()

    def close_all(self) -> None:
        for ifname in list(self._hello):
            self.close(ifname)

    # -- sending ----------------------------------------------------------
    def send(self, ifname: str, data: bytes, dest: str, port: int) -> None:
        s = self._hello.get(ifname)
        if s is None:
            return
        try:
            s.sendto(data, (dest, port))
        except OSError as exc:  # ENETDOWN while the link is down, EAGAIN under load
            log.debug("send on %s to %s failed: %s", ifname, dest, exc)

    def send_advert(self, ifname: str, data: bytes, dest: str) -> None:
        self.send(ifname, data, dest, self.advert_port)

    def send_hello(self, ifname: str, data: bytes) -> None:
        self.send(ifname, data, HELLO_GROUP, self.udp_port)

    def send_echo(self, ifname: str, packet: bytes, dest: str) -> None:
        s = self._echo.get(ifname)
        if s is None:
            return
        try:
            s.sendto(packet, (dest, 0))
        except OSError as exc:  # ENETDOWN while the link is down
            log.debug("echo on %s to %s failed: %s", ifname, dest, exc)

    # -- receiving --------------------------------------------------------
    def hellos(self) -> Iterator[tuple[str, Datagram]]:
        """Every queued hello (READ_BUDGET per interface)."""
        for ifname, s in list(self._hello.items()):
            for datagram in self._recv(ifname, s):
                yield ifname, datagram

    def echo_replies(self) -> Iterator[tuple[str, Datagram]]:
        for ifname, s in list(self._echo.items()):
            for datagram in self._recv(ifname, s):
                yield ifname, datagram

    def guard(self, what: str) -> None:
        """Count (and log once) a datagram whose handling raised in the caller's code."""
        self.guard_errors[what] += 1
        if what not in self._logged:
            self._logged.add(what)
            log.exception("handling a %s failed; counted as internal_error", what)

    def _adverts_readable(self, ifname: str) -> None:
        """Queued adverts (READ_BUDGET, ADVERT_TURN_S at most), each in its own guard."""
        s = self._advert.get(ifname)
        if s is None:
            return
        started = time.perf_counter()
        for datagram in self._recv(ifname, s):
            try:
                self.on_advert(ifname, datagram)
            except Exception:  # the cores never raise; this guards the caller's own code
                self.guard("advert")
            if time.perf_counter() - started > ADVERT_TURN_S:
                return

    def _recv(self, ifname: str, s: socket.socket) -> Iterator[Datagram]:
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

    def count_kernel_drops(self) -> None:
        """Add what the kernel dropped on our sockets (GTSM filter, full queue) since last time."""
        for kind, socks in (("hello", self._hello), ("advert", self._advert)):
            for s in list(socks.values()):
                try:
                    info = s.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (SK_MEMINFO_DROPS + 1))
                except OSError:
                    continue
                drops = struct.unpack_from("@I", info, 4 * SK_MEMINFO_DROPS)[0]
                seen = self._drops_seen.get(s.fileno(), 0)
                if drops > seen:
                    self.kernel_drops[kind] += drops - seen
                self._drops_seen[s.fileno()] = drops
