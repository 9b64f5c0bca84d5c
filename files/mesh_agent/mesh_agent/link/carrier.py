"""Mesh interfaces appearing, losing carrier and going away, from rtnetlink (the I/O).

The kernel's link messages (RTMGRP_LINK) become :class:`LinkChange` values;
:class:`InterfaceFollower` hands them to the sockets and the link core.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mesh_agent.routes.pyroute2_lean import RTMGRP_LINK, AsyncIPRoute

if TYPE_CHECKING:
    from mesh_agent.link.sensor import Event, LinkSensor
    from mesh_agent.link.sockets import MeshSockets

log = logging.getLogger("mesh_agent")

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
RTM_DELLINK = 17


@dataclass(frozen=True)
class LinkChange:
    ifname: str
    index: int
    up: bool  # administratively up and with carrier
    deleted: bool


async def interfaces(ipr: AsyncIPRoute, wanted: Callable[[str], bool]) -> dict[str, int]:
    """The wanted interfaces that exist now: name -> ifindex."""
    found = {}
    async for link in await ipr.get_links():
        name = link.get_attr("IFLA_IFNAME")
        if name and wanted(name):
            found[name] = link["index"]
    return found


async def link_changes(wanted: Callable[[str], bool]) -> AsyncIterator[LinkChange]:
    """Every change of a wanted interface, for as long as the caller iterates."""
    mon = AsyncIPRoute()
    try:
        await mon.bind(groups=RTMGRP_LINK)
        while True:
            async for msg in mon.get():
                name = msg.get_attr("IFLA_IFNAME")
                if not name or not wanted(name):
                    continue
                flags = msg["flags"]
                yield LinkChange(
                    name,
                    msg["index"],
                    up=bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP),
                    deleted=msg["header"]["type"] == RTM_DELLINK,
                )
    finally:
        mon.close()


class InterfaceFollower:
    """The mesh interfaces the agent listens on, kept in step with the kernel: a socket
    opened as a wanted interface appears (or gets carrier back), the link core told of a
    carrier loss or a removal, and routing's ifindex map kept current."""

    def __init__(
        self,
        wanted: Callable[[str], bool],
        sockets: MeshSockets,
        sensor: LinkSensor,
        ifindex: dict[str, int],
        forget_interface: Callable[[int], None],
        on_events: Callable[[list[Event]], None],
        clock: Callable[[], float],
    ) -> None:
        self.wanted, self.sockets, self.sensor, self.ifindex = wanted, sockets, sensor, ifindex
        self.forget_interface, self.on_events, self.clock = forget_interface, on_events, clock

    async def open_existing(self, ipr: AsyncIPRoute) -> None:
        for ifname, index in sorted((await interfaces(ipr, self.wanted)).items()):
            self.open(ifname, index)

    def open(self, ifname: str, index: int) -> None:
        self.ifindex[ifname] = index
        if ifname not in self.sockets.interfaces and self.sockets.open(ifname):
            self.sensor.add_interface(ifname)
            log.info("listening for hellos on %s", ifname)

    async def follow(self) -> None:
        async for ch in link_changes(self.wanted):
            if ch.up and not ch.deleted:
                self.open(ch.ifname, ch.index)
                continue
            if ch.ifname in self.sockets.interfaces:
                # The kernel has already dropped our nexthops on this device,
                # and the groups and routes that used only them.
                self.forget_interface(ch.index)
                if events := self.sensor.carrier_lost(ch.ifname, self.clock()):
                    log.info("carrier lost on %s", ch.ifname)
                self.on_events(events)
            if ch.deleted:
                self.sockets.close(ch.ifname)
                self.on_events(self.sensor.remove_interface(ch.ifname, self.clock()))
                self.ifindex.pop(ch.ifname, None)
