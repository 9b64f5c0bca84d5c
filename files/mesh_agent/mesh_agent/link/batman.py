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

Naming. batman-adv knows neighbours by the MAC of their hard interface. Each
node gives its hard interfaces derived MACs, ``02:<index>:<its IPv4 mesh
address>`` (Gluon-style; the batman_adv role and every card's seed set them),
so :func:`address_of_mac` reads the neighbour's mesh address out of the MAC,
and the origin of the signed advert for that address names it
(:meth:`BatmanSensor.set_addresses`, fed from the link-state database). A MAC
of another shape, or an address no advert claims yet, keeps the neighbour
known by its MAC (as is /etc/bat-hosts, which names MACs first); it appears in
our advert under that name and makes no edge, since edges need both ends. A
neighbour renamed once its advert arrives comes up under its name.

Flooding. batman-adv makes the whole mesh one layer-2 segment, so adverts are
not relayed neighbour by neighbour: our own goes to the limited broadcast on
the interface carrying the mesh address (bat0, or the bridge it is a port of),
which batman-adv delivers to every node, and nothing is relayed
(:meth:`BatmanSensor.flood_targets`). No hellos are sent (batman-adv senses the
links).

Sans-I/O: :meth:`BatmanSensor.update` takes the parsed tables and ``now``;
its I/O adapter, beside it in :mod:`mesh_agent.link.batman_io`, reads them (from
the kernel over generic netlink, :mod:`mesh_agent.link.batman_netlink`, or from
batctl).
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
# Adverts on a batman-adv mesh go to every node at once: the limited broadcast.
BROADCAST = "255.255.255.255"


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

    def hello_counts(self) -> tuple[int, int] | None:
        return None  # the quality is batman-adv's (TQ or throughput), not hello counts

    def loss(self) -> float:
        if self.tq is not None:
            return 1.0 - min(TQ_MAX, max(0, self.tq)) / TQ_MAX
        if self.throughput_mbit is not None and self.reference_mbit > 0:
            return 1.0 - min(1.0, self.throughput_mbit / self.reference_mbit)
        return 1.0


def address_of_mac(mac: str) -> str | None:
    """The IPv4 mesh address in a derived MAC ``02:<index>:<a>:<b>:<c>:<d>``, or None.

    >>> address_of_mac("02:02:0a:4d:00:03")
    '10.77.0.3'
    """
    if not _MAC_RE.match(mac.lower()):
        return None
    octets = [int(x, 16) for x in mac.split(":")]
    if octets[0] != 0x02 or octets[1] == 0:
        return None
    return ".".join(str(o) for o in octets[2:])


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
        # Mesh address -> node name, from the signed adverts (set_addresses).
        self._by_address: dict[str, str] = {}

    def set_addresses(self, addresses: Mapping[str, str]) -> None:
        """Learn which node owns which mesh address (origin -> address, from the LSDB)."""
        self._by_address = {addr: origin for origin, addr in addresses.items()}

    # -- where the shell sends: no hellos, adverts to everyone at once ------
    def hello_interfaces(self) -> list[str]:
        return []

    def flood_targets(self, came_from: tuple[str, str] | None = None) -> list[tuple[str, str]]:
        """Our own advert: the broadcast on each mesh interface; nothing is relayed."""
        return [] if came_from is not None else [(ifname, BROADCAST) for ifname in self.interfaces]

    def exchange_targets(self, ev: NeighborUp) -> list[tuple[str, str]]:
        """A new neighbour already hears every node's broadcast refreshes."""
        return []

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
        events: list[Event] = self._rename()
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
        if mac in self.hosts:
            return self.hosts[mac]
        address = address_of_mac(mac)
        return self._by_address.get(address, mac) if address else mac

    def _rename(self) -> list[Event]:
        """Re-key neighbours whose name is now known; an up one comes up under it."""
        events: list[Event] = []
        for key in list(self._table):
            nb = self._table[key]
            name = self._name(nb.link_address)
            if name == nb.name or (nb.ifname, name) in self._table:
                continue
            del self._table[key]
            nb.name = name
            self._table[(nb.ifname, name)] = nb
            if nb.state == "up":
                at = nb.up_since if nb.up_since is not None else nb.last_rx
                events.append(NeighborUp(nb.ifname, nb.name, nb.link_address, nb.node_address, at))
        return events

    def _add(self, link: BatmanLink, tq: int | None, now: float, state: str) -> BatmanNeighbor:
        nb = BatmanNeighbor(
            ifname=link.ifname,
            name=self._name(link.mac),
            node_address=address_of_mac(link.mac) or "",
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
