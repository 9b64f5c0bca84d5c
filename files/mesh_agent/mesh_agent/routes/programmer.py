"""Kernel route programming with prepared backups (nexthop objects and groups).

Layout in the kernel (all with ``protocol = route_protocol``):

* one nexthop object per usable neighbour: ``id N via <link addr> dev <if>``;
* one nexthop *group* per (primary, backup) next-hop pair used by some
  destination, holding just the primary's nexthop;
* one route per destination: ``<dst>/32 nhid <group> src <node address>``;
* a *standby* route per destination with a backup next hop:
  ``<dst>/32 nhid <backup's nexthop> metric STANDBY_METRIC``. The kernel never
  uses it while the primary route exists.

Fast failover when neighbour D dies: ``PathTable.failover(D)`` (a lookup) says
which destinations move to which backup; each group keyed (D, B) is replaced
to hold nexthop B. That is one ``nexthop replace`` per group, whatever the
number of destinations behind it, and no path computation. A normal
``sync`` from a fresh ``PathTable.update`` follows.

When the interface itself goes down (or loses carrier) the kernel deletes
every nexthop on it, every group left empty and every route using those
groups. The standby routes are then the best match left, so traffic moves to
the backups inside the kernel, in the same instant, before the agent has even
read the link event; on a 50-agent lab on 2 cores the agent's own re-adds took
100-250 ms of CPU wait. The failover then re-adds the primary routes through
the switched groups (``route replace``), still without any path computation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from mesh_agent.routes.netlink import KernelRoute, Netlink, NetlinkError

log = logging.getLogger(__name__)

NH_ID_BASE = 0x6D650000  # "me": clear of ids picked by hand (small integers)
GROUP_ID_BASE = 0x6D660000
# Metric of the standby routes. Any value above 0 works; a high one stays clear
# of metrics an operator gives his own routes to the same /32.
STANDBY_METRIC = 0x6D65
# Kernel operations between two turns of the event loop during a sync.
OPS_PER_YIELD = 32

GroupKey = tuple[str, str | None]
# The primary in the key of a route detoured straight to a neighbour's nexthop
# (no node has the empty name, so no sync wants it: the next one restores the group).
DETOUR = ""


class _Preempted(Exception):
    """Raised inside a sync when a failover asked for the route lock."""


class ChoiceLike(Protocol):
    @property
    def destination(self) -> str: ...
    @property
    def primary_next_hop(self) -> str: ...
    @property
    def backup_next_hop(self) -> str | None: ...


@dataclass(frozen=True)
class NeighborLink:
    ifname: str
    ifindex: int
    gateway: str


@dataclass(frozen=True)
class InstalledRoute:
    destination: str
    address: str
    primary: str
    backup: str | None
    active: str
    group_id: int


class RouteProgrammer:
    """Keeps the kernel in step with the path table. ``netlink=None`` is observe mode."""

    def __init__(self, netlink: Netlink | None, protocol: int, prefsrc: str | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.nl = netlink
        self.clock = clock
        self.protocol = protocol
        self.prefsrc = prefsrc
        self._nh_ids: dict[str, int] = {}
        self._gids: dict[GroupKey, int] = {}
        self._nh: dict[str, NeighborLink] = {}  # installed neighbour nexthops
        self._groups: dict[GroupKey, str] = {}  # installed group -> active member
        self._routes: dict[str, tuple[str, GroupKey]] = {}  # dst name -> (address, key)
        self._flushed: dict[str, tuple[str, GroupKey]] = {}  # routes the kernel dropped
        self._standby: dict[str, tuple[str, str]] = {}  # dst name -> (address, backup name)
        # Kernel objects of a previous run kept across a restart (adopt): its routes by
        # (address, metric), and the ids of its nexthops and groups. Our own ids skip
        # these; sweep_stale removes what was not replaced.
        self._stale_routes: set[tuple[str, int]] = set()
        self._stale_ids: set[int] = set()
        self._next_ids = {NH_ID_BASE: 0, GROUP_ID_BASE: 0}
        self.errors_total = 0
        self.preempted_total = 0
        self.detours_total = 0  # routes moved by remote detours (detour_now)
        self.last_sync_ok = False
        self._syncing = False
        self._preempt = False
        self._ops = 0
        # Our installed routes per active next hop, and per neighbour none of them uses
        # now the clock time the last one moved off it (gone again once one uses it): the
        # MAPE-K loop's time to mitigate reads these, finer than its own samples.
        self.via: Counter[str] = Counter()
        self.via_left: dict[str, float] = {}

    @property
    def enforce(self) -> bool:
        return self.nl is not None

    def _new_id(self, base: int) -> int:
        """The next id above *base* that no adopted kernel object holds."""
        while True:
            self._next_ids[base] += 1
            nid = base + self._next_ids[base]
            if nid not in self._stale_ids:
                return nid

    def _nh_id(self, name: str) -> int:
        if name not in self._nh_ids:
            self._nh_ids[name] = self._new_id(NH_ID_BASE)
        return self._nh_ids[name]

    def _gid(self, key: GroupKey) -> int:
        if key not in self._gids:
            self._gids[key] = self._new_id(GROUP_ID_BASE)
        return self._gids[key]

    def request_preempt(self) -> None:
        """Ask a running :meth:`sync` to stop before its next kernel operation.

        The failover path calls this before taking the route lock, so a long
        reconvergence never delays it by more than one netlink round trip.
        The preempted sync returns False; the agent runs a fresh one after.
        """
        if self._syncing:
            self._preempt = True

    async def _op(self, method: str, *args: Any) -> bool:
        """Run one Netlink method; in observe mode only pretend it worked.

        Netlink's operations complete without yielding (routes.netlink), so a
        long sync gives the event loop a turn every OPS_PER_YIELD operations:
        hellos, echo answers and a failover are never held up by more than
        a millisecond or two of route programming.
        """
        self._ops += 1
        if self._ops % OPS_PER_YIELD == 0:
            await asyncio.sleep(0)
        if self._preempt and self._syncing:
            raise _Preempted
        if self.nl is None:
            return True
        try:
            await getattr(self.nl, method)(*args)
        except NetlinkError as exc:
            self.errors_total += 1
            log.warning("netlink %s%r failed: %s", method, args, exc)
            return False
        return True

    # -- start / stop -----------------------------------------------------
    async def flush_own(self) -> int:
        """Remove every route and nexthop carrying our protocol (leftovers of a crash)."""
        if self.nl is None:
            return 0
        removed = await self._remove_own(lambda r: True, lambda nh_id: True)
        self._nh.clear()
        self._groups.clear()
        self._routes.clear()
        self._standby.clear()
        self._note_via()
        return removed

    async def _remove_own(
        self, route: Callable[[KernelRoute], bool], nexthop: Callable[[int], bool]
    ) -> int:
        """Delete the kernel's /32 routes of our protocol that *route* picks, then its
        nexthops of our protocol that *nexthop* picks (groups first); the count deleted."""
        assert self.nl is not None
        removed = 0
        for r in await self.nl.routes():
            if r.protocol == self.protocol and r.dst_len == 32 and route(r):
                removed += await self._op("route_delete", r.dst, self.protocol, r.priority)
        nhs = [n for n in await self.nl.nexthops() if n.protocol == self.protocol and nexthop(n.id)]
        for n in sorted(nhs, key=lambda n: not n.group):  # groups first
            removed += await self._op("nexthop_delete", n.id)
        return removed

    async def adopt(self) -> int:
        """Keep what a previous run left in the kernel, to be replaced or swept.

        A restart (an upgrade, a rollout's wave, a crash) need not stop this node
        forwarding: the routes it left still point at neighbours that mostly still
        work. Our syncs replace each adopted route in place (``route replace`` of the
        same address and metric, through nexthops with fresh ids), and
        :meth:`sweep_stale` removes what is left once the restart's grace is over.
        Returns how many routes were adopted.
        """
        if self.nl is None:
            return 0
        self._stale_routes = {
            (r.dst, r.priority or 0)
            for r in await self.nl.routes()
            if r.protocol == self.protocol and r.dst_len == 32
        }
        self._stale_ids = {n.id for n in await self.nl.nexthops() if n.protocol == self.protocol}
        return len(self._stale_routes)

    async def sweep_stale(self) -> int:
        """Remove the adopted objects no sync replaced (a replaced route points at one of
        our own nexthops now); the count removed."""
        if self.nl is None or not (self._stale_routes or self._stale_ids):
            return 0
        stale_routes, stale_ids = self._stale_routes, self._stale_ids
        removed = await self._remove_own(
            lambda r: (r.dst, r.priority or 0) in stale_routes
            and (r.nhid is None or r.nhid in stale_ids),
            stale_ids.__contains__,
        )
        self._stale_routes = set()
        self._stale_ids = set()
        return removed

    def stale_count(self) -> int:
        """Routes adopted from a previous run, until :meth:`sweep_stale` (replaced or not)."""
        return len(self._stale_routes)

    # -- reconvergence ----------------------------------------------------
    async def sync(
        self,
        choices: Mapping[str, ChoiceLike],
        addresses: Mapping[str, str],
        links: Mapping[str, NeighborLink],
    ) -> bool:
        """Make the kernel match *choices*; return True when every operation succeeded."""
        self._syncing = True
        try:
            return await self._sync(choices, addresses, links)
        except _Preempted:
            self.preempted_total += 1
            self.last_sync_ok = False
            return False
        finally:
            self._syncing = False
            self._preempt = False
            self._note_via()

    async def _sync(
        self,
        choices: Mapping[str, ChoiceLike],
        addresses: Mapping[str, str],
        links: Mapping[str, NeighborLink],
    ) -> bool:
        ok = True
        want_routes: dict[str, tuple[str, GroupKey]] = {}
        for dst, ch in choices.items():
            addr = addresses.get(dst)
            if addr is None or addr == self.prefsrc:
                continue
            backup = ch.backup_next_hop if ch.backup_next_hop in links else None
            if ch.primary_next_hop not in links and backup is None:
                continue
            want_routes[dst] = (addr, (ch.primary_next_hop, backup))
        want_groups: dict[GroupKey, str] = {
            key: key[0] if key[0] in links else str(key[1]) for _, key in want_routes.values()
        }
        want_nh = {n: links[n] for key in want_groups for n in key if n is not None and n in links}
        want_standby = {
            dst: (addr, str(key[1]))
            for dst, (addr, key) in want_routes.items()
            if key[1] is not None and key[1] != key[0]
        }

        # Add and change, bottom up: nexthops, groups, routes.
        for name, link in want_nh.items():
            if self._nh.get(name) != link:
                if await self._op(
                    "nexthop_replace", self._nh_id(name), link.ifindex, link.gateway, self.protocol
                ):
                    self._nh[name] = link
                else:
                    ok = False
        for key, member in want_groups.items():
            if self._groups.get(key) != member:
                if await self._op(
                    "group_replace", self._gid(key), [self._nh_id(member)], self.protocol
                ):
                    self._groups[key] = member
                else:
                    ok = False
        for dst, (addr, key) in want_routes.items():
            if key not in self._groups:
                ok = False
                continue
            if self._routes.get(dst) != (addr, key):
                old = self._routes.get(dst)
                if old is not None and old[0] != addr:
                    await self._op("route_delete", old[0], self.protocol)
                if await self._op(
                    "route_replace", addr, self._gid(key), self.prefsrc, self.protocol
                ):
                    self._routes[dst] = (addr, key)
                else:
                    ok = False
        for dst, (addr, backup) in want_standby.items():
            if self._standby.get(dst) != (addr, backup) and backup in self._nh:
                old_sb = self._standby.get(dst)
                if old_sb is not None and old_sb[0] != addr:
                    await self._op("route_delete", old_sb[0], self.protocol, STANDBY_METRIC)
                if await self._op(
                    "route_replace",
                    addr,
                    self._nh_id(backup),
                    self.prefsrc,
                    self.protocol,
                    STANDBY_METRIC,
                ):
                    self._standby[dst] = (addr, backup)
                else:
                    ok = False

        # Remove, top down: routes, groups, nexthops.
        # Forget each object only after its delete was sent, so that a
        # preempted sync never leaks a kernel object we no longer know about.
        for dst in [d for d in self._standby if d not in want_standby]:
            await self._op("route_delete", self._standby[dst][0], self.protocol, STANDBY_METRIC)
            del self._standby[dst]
        for dst in [d for d in self._routes if d not in want_routes]:
            await self._op("route_delete", self._routes[dst][0], self.protocol)
            del self._routes[dst]
        for key in [k for k in self._groups if k not in want_groups]:
            await self._op("nexthop_delete", self._gid(key))
            del self._groups[key]
        for name in [n for n in self._nh if n not in want_nh]:
            await self._op("nexthop_delete", self._nh_id(name))
            del self._nh[name]
        self._flushed.clear()
        self.last_sync_ok = ok
        return ok

    # -- fast path --------------------------------------------------------
    def forget_interface(self, ifindex: int) -> None:
        """Mirror what the kernel did itself when *ifindex* went down."""
        gone = {n for n, link in self._nh.items() if link.ifindex == ifindex}
        for n in gone:
            del self._nh[n]
        dead_groups = {k for k, member in self._groups.items() if member in gone}
        for k in dead_groups:
            del self._groups[k]
        for dst in [d for d, (_, k) in self._routes.items() if k in dead_groups]:
            self._flushed[dst] = self._routes.pop(dst)
        for dst in [d for d, (_, k) in self._routes.items() if k[0] == DETOUR and k[1] in gone]:
            del self._routes[dst]  # the kernel dropped it with its nexthop: the next sync adds it
        for dst in [d for d, (_, b) in self._standby.items() if b in gone]:
            del self._standby[dst]
        self._note_via()

    def _switches(self, dead: str, moves: Mapping[str, str]) -> dict[GroupKey, list[str]]:
        """The prepared groups (dead, backup) that *moves* switch, with their destinations."""
        dsts_by_key: dict[GroupKey, list[str]] = {}
        for dst, backup in moves.items():
            key: GroupKey = (dead, backup)
            if key not in self._gids or backup not in self._nh:
                continue  # no prepared backup nexthop: reconvergence will handle it
            dsts_by_key.setdefault(key, []).append(dst)
        return dsts_by_key

    def switch_now(self, dead: str, moves: Mapping[str, str]) -> int:
        """Point every group whose primary is *dead* at its backup, synchronously.

        *moves* is ``PathTable.failover(dead)`` (destination -> backup next
        hop). One ``group_replace_now`` per (dead, backup) pair, usually one in
        all: done when this returns, with no await, so nothing queued on the
        event loop runs first. Returns the number of kernel operations done.
        """
        ops = 0
        for key in self._switches(dead, moves):
            backup = str(key[1])
            if self._groups.get(key) == backup:
                continue
            if self.nl is not None:
                try:
                    self.nl.group_replace_now(self._gid(key), [self._nh_id(backup)], self.protocol)
                except (NetlinkError, OSError) as exc:
                    self.errors_total += 1
                    log.warning("netlink group_replace_now %r -> %s failed: %s", key, backup, exc)
                    continue
            self._groups[key] = backup
            ops += 1
        self._note_via()
        return ops

    def detour_now(self, moves: Mapping[str, str]) -> int:
        """Point each destination of *moves* (``PathTable.detours``: destination ->
        backup next hop) straight at that neighbour's nexthop, synchronously.

        One ``route replace`` per destination (a group may also carry
        destinations the removed link does not concern). The route is then
        remembered under a key no sync ever wants, so the next sync puts it
        back on its group. Returns the number of kernel operations done.
        """
        ops = 0
        for dst, backup in moves.items():
            route = self._routes.get(dst)
            if route is None or backup not in self._nh:
                continue
            addr, key = route
            if key == (DETOUR, backup) or self._groups.get(key) == backup:
                continue  # already there (its group was switched by a local failover)
            if self.nl is not None:
                try:
                    self.nl.route_replace_now(addr, self._nh_id(backup), self.prefsrc,
                                              self.protocol)
                except (NetlinkError, OSError) as exc:
                    self.errors_total += 1
                    log.warning("netlink route_replace_now %s -> %s failed: %s", dst, backup, exc)
                    continue
            self._routes[dst] = (addr, (DETOUR, backup))
            ops += 1
        self.detours_total += ops
        self._note_via()
        return ops

    async def readd_flushed(self, dead: str, moves: Mapping[str, str]) -> int:
        """After a carrier loss: put back the routes the kernel dropped with their group.

        Not on the critical path: the standby routes carried the traffic from
        the moment the kernel dropped the primaries.
        """
        readd: list[tuple[str, str, GroupKey]] = []
        for key, dsts in self._switches(dead, moves).items():
            for dst in dsts:
                flushed = self._flushed.pop(dst, None)
                if flushed is not None and dst not in self._routes and key in self._groups:
                    readd.append((dst, flushed[0], key))
        ops = 0
        for dst, addr, key in readd:
            if await self._op("route_replace", addr, self._gid(key), self.prefsrc, self.protocol):
                self._routes[dst] = (addr, key)
                ops += 1
        self._note_via()
        return ops

    async def failover(
        self, dead: str, moves: Mapping[str, str], routes_flushed: bool = False
    ) -> int:
        """:meth:`switch_now`, then (carrier loss) :meth:`readd_flushed`; kernel ops done."""
        ops = self.switch_now(dead, moves)
        if routes_flushed:
            ops += await self.readd_flushed(dead, moves)
        return ops

    # -- views ------------------------------------------------------------
    def _active(self, key: GroupKey) -> str:
        """The next hop a route keyed *key* forwards to now."""
        return str(key[1]) if key[0] == DETOUR else self._groups.get(key, key[0])

    def _note_via(self) -> None:
        """Update :attr:`via` and :attr:`via_left` after the routes changed."""
        via = Counter(self._active(key) for _, key in self._routes.values())
        now = self.clock()
        for name in self.via.keys() - via.keys():
            self.via_left[name] = now
        for name in via:
            self.via_left.pop(name, None)
        self.via = via

    def installed(self) -> list[InstalledRoute]:
        out = []
        for dst, (addr, key) in sorted(self._routes.items()):
            detoured = key[0] == DETOUR  # straight to the backup's nexthop
            out.append(
                InstalledRoute(
                    destination=dst,
                    address=addr,
                    primary=key[0],
                    backup=key[1],
                    active=self._active(key),
                    group_id=self._nh_id(str(key[1])) if detoured else self._gid(key),
                )
            )
        return out

    def route_count(self) -> int:
        return len(self._routes)

    def standby_count(self) -> int:
        """Standby routes in the kernel (each takes over by itself on carrier loss)."""
        return len(self._standby)
