"""Mesh interfaces appearing, losing carrier and going away, from rtnetlink (the I/O).

The kernel's link messages (RTMGRP_LINK) become :class:`LinkChange` values;
what to do about them is the agent's and the link core's business.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from mesh_agent.routes.pyroute2_lean import RTMGRP_LINK, AsyncIPRoute

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
