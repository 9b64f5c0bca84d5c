"""batman-adv link backend: neighbours and originators (TQ) from batctl's JSON.

batman-adv routes at layer 2 inside the kernel; this backend only *reads* its
view of the links and feeds it into the same neighbour table as the native
hello backend (:class:`~mesh_agent.link.sensor.LinkSensor`), so the API,
metrics and every consumer of the table see one shape.

Source: ``batctl meshif <bat0> neighbors_json`` and ``originators_json``
(batctl 2021.0 and later; bookworm ships 2023.0). batctl prints each generic
netlink dump (BATADV_CMD_GET_NEIGHBORS, BATADV_CMD_GET_ORIGINATORS) as a JSON
list of objects whose keys are the BATADV_ATTR_* names in lower case without
the prefix (batctl ``genl_json.c``):

* neighbours: ``hard_ifindex``, ``hard_ifname`` (newer kernels),
  ``neigh_address``, ``last_seen_msecs``; BATMAN_V adds ``throughput`` in
  100 kbit/s.
* originators: ``orig_address``, ``neigh_address`` (the next hop),
  ``hard_ifindex``/``hard_ifname``, ``last_seen_msecs``, ``tq`` (BATMAN_IV,
  0..255) or ``throughput`` (BATMAN_V), and ``best: true`` on the chosen
  router.

Link quality: with BATMAN_IV a direct neighbour's TQ is its originator entry
whose next hop is itself; TQ is batman's estimate of the delivery
probability (255 = every packet), so ``loss = 1 - tq/255``. A neighbour heard
but without such an entry is not yet bidirectional: it stays ``init`` as in
the native backend. With BATMAN_V the neighbour's estimated throughput, as a
share of ``reference_mbit``, stands in for delivery (``loss = 1 - share``).
The inherited :meth:`Neighbor.cost` quantises either exactly like native loss.

Sans-I/O: :meth:`BatmanSensor.update` takes the parsed JSON and ``now``;
its I/O adapter, beside it in :mod:`mesh_agent.link.batman_io`, runs batctl.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh_agent.link.sensor import Event, LinkSensor, Neighbor, NeighborUp

log = logging.getLogger("mesh_agent.link.batman")

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
TQ_MAX = 255
# BATADV_ATTR_THROUGHPUT is in units of 100 kbit/s (batctl prints value / 10 Mbit/s).
THROUGHPUT_UNIT_MBIT = 0.1


@dataclass(frozen=True)
class BatmanLink:
    """One direct neighbour as batman-adv reports it."""

    ifname: str
    mac: str
    last_seen_s: float
    tq: int | None = None
    throughput_mbit: float | None = None


@dataclass(frozen=True)
class Originator:
    """One originator (any node of the mesh) and the next hop towards it."""

    mac: str
    next_hop: str
    ifname: str
    last_seen_s: float
    tq: int | None
    throughput_mbit: float | None
    best: bool


@dataclass
class BatmanNeighbor(Neighbor):
    """A neighbour whose quality comes from batman-adv, not from hellos."""

    tq: int | None = None
    throughput_mbit: float | None = None
    reference_mbit: float = 100.0

    def loss(self) -> float:
        if self.tq is not None:
            return 1.0 - min(TQ_MAX, max(0, self.tq)) / TQ_MAX
        if self.throughput_mbit is not None and self.reference_mbit > 0:
            return 1.0 - min(1.0, self.throughput_mbit / self.reference_mbit)
        return 1.0


def parse_bat_hosts(text: str) -> dict[str, str]:
    """``/etc/bat-hosts`` (batctl's MAC-to-name file): ``MAC name`` per line."""
    hosts: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2 and _MAC_RE.match(parts[0].lower()):
            hosts[parts[0].lower()] = parts[1]
    return hosts


def _ifindex_name(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"ifindex{index}"


def _mac(entry: Mapping[str, Any], key: str) -> str | None:
    value = entry.get(key)
    if isinstance(value, str) and _MAC_RE.match(value.lower()):
        return value.lower()
    return None


def _uint(entry: Mapping[str, Any], key: str, hi: int) -> int | None:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        return None
    return value


def _ifname(entry: Mapping[str, Any], ifname_of: Callable[[int], str]) -> str | None:
    name = entry.get("hard_ifname")
    if isinstance(name, str) and 0 < len(name) <= 15:
        return name
    index = _uint(entry, "hard_ifindex", 2**31 - 1)
    return ifname_of(index) if index else None


def parse_neighbors(
    data: Any, ifname_of: Callable[[int], str] = _ifindex_name
) -> tuple[list[BatmanLink], int]:
    """Entries of ``neighbors_json``; returns (links, malformed entry count)."""
    if not isinstance(data, list):
        return [], 1
    links, bad = [], 0
    for entry in data:
        if not isinstance(entry, dict):
            bad += 1
            continue
        mac = _mac(entry, "neigh_address")
        ifname = _ifname(entry, ifname_of)
        seen = _uint(entry, "last_seen_msecs", 2**32 - 1)
        if mac is None or ifname is None or seen is None:
            bad += 1
            continue
        thr = _uint(entry, "throughput", 2**32 - 1)
        links.append(
            BatmanLink(
                ifname=ifname,
                mac=mac,
                last_seen_s=seen / 1000.0,
                throughput_mbit=None if thr is None else thr * THROUGHPUT_UNIT_MBIT,
            )
        )
    return links, bad


def parse_originators(
    data: Any, ifname_of: Callable[[int], str] = _ifindex_name
) -> tuple[list[Originator], int]:
    """Entries of ``originators_json``; returns (originators, malformed entry count)."""
    if not isinstance(data, list):
        return [], 1
    origs, bad = [], 0
    for entry in data:
        if not isinstance(entry, dict):
            bad += 1
            continue
        mac = _mac(entry, "orig_address")
        hop = _mac(entry, "neigh_address")
        ifname = _ifname(entry, ifname_of)
        seen = _uint(entry, "last_seen_msecs", 2**32 - 1)
        if mac is None or hop is None or ifname is None or seen is None:
            bad += 1
            continue
        thr = _uint(entry, "throughput", 2**32 - 1)
        origs.append(
            Originator(
                mac=mac,
                next_hop=hop,
                ifname=ifname,
                last_seen_s=seen / 1000.0,
                tq=_uint(entry, "tq", TQ_MAX),
                throughput_mbit=None if thr is None else thr * THROUGHPUT_UNIT_MBIT,
                best=entry.get("best") is True,
            )
        )
    return origs, bad


class BatmanSensor(LinkSensor):
    """The neighbour table, fed by batman-adv dumps instead of hellos.

    A neighbour is up while batman-adv heard it within ``dead_after_s`` and
    (BATMAN_IV) has a TQ for it; it goes down with reason ``timeout`` when it
    is older than that or gone from the dump. If polling itself stops, the
    inherited :meth:`tick` ages neighbours out on the same threshold.
    """

    def __init__(
        self,
        node_name: str,
        node_address: str,
        dead_after_s: float,
        dead_multiplier: int = 3,
        hosts: Mapping[str, str] | None = None,
        reference_mbit: float = 100.0,
    ) -> None:
        # The base class declares a neighbour dead after dead_multiplier x its
        # interval; pick the interval so that this equals dead_after_s.
        super().__init__(node_name, node_address, dead_after_s / dead_multiplier, dead_multiplier)
        self.dead_after_s = dead_after_s
        self.hosts = dict(hosts or {})
        self.reference_mbit = reference_mbit
        self.originators: list[Originator] = []
        self.polls_total = 0

    def receive(
        self, ifname: str, data: bytes, src: str, now: float, ttl: int | None = None
    ) -> list[Event]:
        """Hellos are not this backend's input: count and ignore them."""
        self.drops["batman_backend"] += 1
        return []

    def update(
        self,
        neighbors: Any,
        originators: Any,
        now: float,
        ifname_of: Callable[[int], str] = _ifindex_name,
    ) -> list[Event]:
        """Apply one pair of dumps; never raises on malformed input."""
        links, bad_n = parse_neighbors(neighbors, ifname_of)
        origs, bad_o = parse_originators(originators, ifname_of)
        if bad_n + bad_o:
            self.drops["malformed"] += bad_n + bad_o
        self.polls_total += 1
        self.originators = origs
        # BATMAN_IV: the TQ of a direct link is the originator entry whose next
        # hop is the originator itself, on that interface.
        direct_tq: dict[tuple[str, str], int] = {}
        for o in origs:
            if o.mac == o.next_hop and o.tq is not None:
                key = (o.ifname, o.mac)
                direct_tq[key] = max(o.tq, direct_tq.get(key, 0))
        events: list[Event] = []
        fresh: set[tuple[str, str]] = set()
        for link in links:
            if link.last_seen_s > self.dead_after_s:
                continue
            key = (link.ifname, self._name(link.mac))
            fresh.add(key)
            tq = direct_tq.get((link.ifname, link.mac))
            nb = self._table.get(key)
            if nb is None or not isinstance(nb, BatmanNeighbor):
                nb = self._add(link, tq, now, state="init")
            nb.last_rx = now - link.last_seen_s
            if tq is None and link.throughput_mbit is None:
                # Heard but no link quality: a new neighbour is not yet
                # bidirectional (init, as in the native backend); a known one
                # keeps its last quality until it times out.
                continue
            nb.tq = tq
            nb.throughput_mbit = link.throughput_mbit
            if nb.state == "init" and not self._held_down(key, nb, now):
                nb.state = "up"
                nb.up_since = now
                events.append(NeighborUp(nb.ifname, nb.name, nb.link_address, nb.node_address, now))
        for key in [k for k in self._table if k not in fresh]:
            events.extend(self._kill(key, "timeout", now))
        return events

    def _name(self, mac: str) -> str:
        return self.hosts.get(mac, mac)

    def _add(self, link: BatmanLink, tq: int | None, now: float, state: str) -> BatmanNeighbor:
        nb = BatmanNeighbor(
            ifname=link.ifname,
            name=self._name(link.mac),
            node_address="",
            link_address=link.mac,
            first_seen=now,
            last_rx=now - link.last_seen_s,
            peer_interval_s=self.hello_interval_s,
            last_seq=0,
            last_peer_ts_us=0,
            state=state,
            tq=tq,
            throughput_mbit=link.throughput_mbit,
            reference_mbit=self.reference_mbit,
        )
        self._table[(nb.ifname, nb.name)] = nb
        return nb
