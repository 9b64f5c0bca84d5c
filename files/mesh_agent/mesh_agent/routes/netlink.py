"""Nexthop objects and nhid routes over rtnetlink, on top of pyroute2's AsyncIPRoute.

pyroute2 0.9.7 has no nexthop-object messages (``RTM_*NEXTHOP``, Linux 5.3+)
and its route message stops before ``RTA_NH_ID``; its synchronous
``IPRoute.nlm_request`` also fails (``KeyError: 'nlm_generator'``). So this
module declares the two message layouts from ``include/uapi/linux/nexthop.h``
and ``rtnetlink.h`` with pyroute2's own ``nlmsg`` machinery and sends them
through the async socket.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any

from mesh_agent.routes.pyroute2_lean import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    AsyncIPRoute,
    NetlinkError,
    nlmsg,
    rtmsg,
)

RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEXTHOP, RTM_DELNEXTHOP, RTM_GETNEXTHOP = 104, 105, 106
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
_REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
_DELETE = NLM_F_REQUEST | NLM_F_ACK
_DUMP = NLM_F_REQUEST | NLM_F_DUMP
_GROUP_ENTRY = struct.Struct("=IBBH")  # struct nexthop_grp: id, weight-1, resvd1, resvd2


class nhmsg(nlmsg):  # type: ignore[misc]
    """``struct nhmsg`` plus the NHA_* attributes we use."""

    prefix = "NHA_"
    fields = (("family", "B"), ("scope", "B"), ("protocol", "B"), ("resvd", "B"), ("flags", "I"))
    nla_map = (
        ("NHA_UNSPEC", "none"),
        ("NHA_ID", "uint32"),
        ("NHA_GROUP", "cdata"),
        ("NHA_GROUP_TYPE", "uint16"),
        ("NHA_BLACKHOLE", "flag"),
        ("NHA_OIF", "uint32"),
        ("NHA_GATEWAY", "ip4addr"),
    )


class rtmsg_nh(rtmsg):  # type: ignore[misc]
    """pyroute2's rtmsg extended up to RTA_NH_ID (30)."""

    nla_map = (
        *rtmsg.nla_map,
        ("RTA_PAD", "hex"),
        ("RTA_UID", "uint32"),
        ("RTA_TTL_PROPAGATE", "uint8"),
        ("RTA_IP_PROTO", "uint8"),
        ("RTA_SPORT", "uint16"),
        ("RTA_DPORT", "uint16"),
        ("RTA_NH_ID", "uint32"),
    )


@dataclass(frozen=True)
class KernelNexthop:
    id: int
    protocol: int
    group: tuple[int, ...]
    oif: int | None
    gateway: str | None


@dataclass(frozen=True)
class KernelRoute:
    dst: str
    dst_len: int
    protocol: int
    table: int
    nhid: int | None
    priority: int = 0


class Netlink:
    """The handful of rtnetlink operations the route programmer needs."""

    def __init__(self, ipr: AsyncIPRoute) -> None:
        self.ipr = ipr
        ipr.marshal.msg_map[RTM_NEWNEXTHOP] = nhmsg
        ipr.marshal.msg_map[RTM_DELNEXTHOP] = nhmsg
        ipr.marshal.msg_map[RTM_NEWROUTE] = rtmsg_nh
        ipr.marshal.msg_map[RTM_DELROUTE] = rtmsg_nh

    async def _request(self, msg: Any, msg_type: int, flags: int) -> list[Any]:
        response = await self.ipr.nlm_request(msg, msg_type, flags)
        return [m async for m in response]

    async def link_index(self, ifname: str) -> int | None:
        found = await self.ipr.link_lookup(ifname=ifname)
        return int(found[0]) if found else None

    async def nexthop_replace(self, nh_id: int, oif: int, gateway: str, protocol: int) -> None:
        m = nhmsg()
        m["family"] = socket.AF_INET
        m["protocol"] = protocol
        m["attrs"] = [("NHA_ID", nh_id), ("NHA_OIF", oif), ("NHA_GATEWAY", gateway)]
        await self._request(m, RTM_NEWNEXTHOP, _REPLACE)

    async def group_replace(self, nh_id: int, members: list[int], protocol: int) -> None:
        m = nhmsg()
        m["family"] = socket.AF_UNSPEC
        m["protocol"] = protocol
        blob = b"".join(_GROUP_ENTRY.pack(i, 0, 0, 0) for i in members)
        m["attrs"] = [("NHA_ID", nh_id), ("NHA_GROUP", blob)]
        await self._request(m, RTM_NEWNEXTHOP, _REPLACE)

    async def nexthop_delete(self, nh_id: int) -> None:
        m = nhmsg()
        m["family"] = socket.AF_UNSPEC
        m["attrs"] = [("NHA_ID", nh_id)]
        await self._request(m, RTM_DELNEXTHOP, _DELETE)

    async def nexthops(self) -> list[KernelNexthop]:
        m = nhmsg()
        m["family"] = socket.AF_UNSPEC
        out = []
        for r in await self._request(m, RTM_GETNEXTHOP, _DUMP):
            if not isinstance(r, nhmsg):
                continue
            blob = r.get_attr("NHA_GROUP") or b""
            group = tuple(
                _GROUP_ENTRY.unpack_from(blob, o)[0] for o in range(0, len(blob) - len(blob) % 8, 8)
            )
            out.append(
                KernelNexthop(
                    r.get_attr("NHA_ID"),
                    r["protocol"],
                    group,
                    r.get_attr("NHA_OIF"),
                    r.get_attr("NHA_GATEWAY"),
                )
            )
        return out

    async def route_replace(
        self, dst: str, nh_id: int, prefsrc: str | None, protocol: int, priority: int = 0
    ) -> None:
        m = rtmsg_nh()
        m["family"] = socket.AF_INET
        m["dst_len"] = 32
        m["table"] = RT_TABLE_MAIN
        m["proto"] = protocol
        m["scope"] = RT_SCOPE_UNIVERSE
        m["type"] = RTN_UNICAST
        attrs: list[tuple[str, Any]] = [("RTA_DST", dst), ("RTA_NH_ID", nh_id)]
        if prefsrc:
            attrs.append(("RTA_PREFSRC", prefsrc))
        if priority:
            # IPv4 replaces only the route with the same metric: the metric-0
            # primary and the standby at a higher metric live side by side.
            attrs.append(("RTA_PRIORITY", priority))
        m["attrs"] = attrs
        await self._request(m, RTM_NEWROUTE, _REPLACE)

    async def route_delete(self, dst: str, protocol: int, priority: int | None = None) -> None:
        """Delete our route to *dst*; with *priority*, only the one with that metric
        (without, the kernel deletes the first match, the lowest metric)."""
        m = rtmsg_nh()
        m["family"] = socket.AF_INET
        m["dst_len"] = 32
        m["table"] = RT_TABLE_MAIN
        m["proto"] = protocol
        attrs: list[tuple[str, Any]] = [("RTA_DST", dst)]
        if priority is not None:
            attrs.append(("RTA_PRIORITY", priority))
        m["attrs"] = attrs
        await self._request(m, RTM_DELROUTE, _DELETE)

    async def routes(self) -> list[KernelRoute]:
        m = rtmsg_nh()
        m["family"] = socket.AF_INET
        out = []
        for r in await self._request(m, RTM_GETROUTE, _DUMP):
            if not isinstance(r, rtmsg):
                continue
            out.append(
                KernelRoute(
                    r.get_attr("RTA_DST") or "0.0.0.0",
                    r["dst_len"],
                    r["proto"],
                    r.get_attr("RTA_TABLE") or r["table"],
                    r.get_attr("RTA_NH_ID"),
                    r.get_attr("RTA_PRIORITY") or 0,
                )
            )
        return out


__all__ = ["KernelNexthop", "KernelRoute", "Netlink", "NetlinkError"]
