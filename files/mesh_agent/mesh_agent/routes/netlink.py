"""Nexthop objects and nhid routes over rtnetlink, on top of pyroute2's AsyncIPRoute.

pyroute2 0.9.7 has no nexthop-object messages (``RTM_*NEXTHOP``, Linux 5.3+)
and its route message stops before ``RTA_NH_ID``; its synchronous
``IPRoute.nlm_request`` also fails (``KeyError: 'nlm_generator'``). So this
module declares the two message layouts from ``include/uapi/linux/nexthop.h``
and ``rtnetlink.h`` with pyroute2's own ``nlmsg`` machinery, to read the dumps
it requests through the async socket.

Changes (replace and delete of nexthops, groups and routes) do not go through
pyroute2 or the event loop at all: this module packs the few dozen bytes of
each request itself and sends them on a plain blocking ``NETLINK_ROUTE``
socket. rtnetlink handles a request inside the sender's ``sendmsg`` and
queues the ACK before it returns, so each operation is done when the call
returns, in tens of microseconds. Awaited pyroute2 requests cost an event-loop
crossing each: on the 50-agent bench a failover's one request took 20-70 ms
and a route sync of 25-50 requests 200-500 ms, while the loops were crowded
with adverts and recomputes; remote nodes kept forwarding into the failed
link (micro-loops) for that long. Dumps (only at start) stay on pyroute2.
The async methods keep their signatures but never yield.
"""

from __future__ import annotations

import os
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
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NHMSG = struct.Struct("=BBBBI")  # family, scope, protocol, resvd, flags
_NLATTR = struct.Struct("=HH")  # len, type
# struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTMSG = struct.Struct("=BBBBBBBBI")
NLMSG_ERROR = 2
NHA_ID, NHA_GROUP, NHA_OIF, NHA_GATEWAY = 1, 2, 5, 6
RTA_DST, RTA_PRIORITY, RTA_PREFSRC, RTA_NH_ID = 1, 6, 7, 30


def _nla(kind: int, payload: bytes) -> bytes:
    raw = _NLATTR.pack(_NLATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _u32(kind: int, value: int) -> bytes:
    return _nla(kind, struct.pack("=I", value))


def _ip4(kind: int, address: str) -> bytes:
    return _nla(kind, socket.inet_aton(address))


def nexthop_body(nh_id: int, oif: int, gateway: str, protocol: int) -> bytes:
    return (
        _NHMSG.pack(socket.AF_INET, 0, protocol, 0, 0)
        + _u32(NHA_ID, nh_id)
        + _u32(NHA_OIF, oif)
        + _ip4(NHA_GATEWAY, gateway)
    )


def group_body(nh_id: int, members: list[int], protocol: int) -> bytes:
    """A group of *members*, weight 1 each."""
    return (
        _NHMSG.pack(socket.AF_UNSPEC, 0, protocol, 0, 0)
        + _u32(NHA_ID, nh_id)
        + _nla(NHA_GROUP, b"".join(_GROUP_ENTRY.pack(i, 0, 0, 0) for i in members))
    )


def route_body(
    dst: str, protocol: int, nh_id: int | None, prefsrc: str | None, priority: int | None
) -> bytes:
    """A /32 in the main table; *nh_id* None for a delete (type and scope then unset)."""
    kind, scope = (RTN_UNICAST, RT_SCOPE_UNIVERSE) if nh_id is not None else (0, 0)
    body = _RTMSG.pack(socket.AF_INET, 32, 0, 0, RT_TABLE_MAIN, protocol, scope, kind, 0)
    body += _ip4(RTA_DST, dst)
    if nh_id is not None:
        body += _u32(RTA_NH_ID, nh_id)
    if prefsrc:
        body += _ip4(RTA_PREFSRC, prefsrc)
    if priority is not None:
        body += _u32(RTA_PRIORITY, priority)
    return body


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

    def __init__(self, ipr: AsyncIPRoute, now_socket: socket.socket | None = None) -> None:
        self.ipr = ipr
        # group_replace_now's own NETLINK_ROUTE socket, opened on first use in
        # our network namespace; a caller whose *ipr* works in another one
        # (tests: AsyncIPRoute(netns=...)) passes a socket opened there.
        self._now: socket.socket | None = now_socket
        self._now_seq = 0
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
        self.request_now(RTM_NEWNEXTHOP, _REPLACE, nexthop_body(nh_id, oif, gateway, protocol))

    async def group_replace(self, nh_id: int, members: list[int], protocol: int) -> None:
        self.group_replace_now(nh_id, members, protocol)

    def request_now(self, msg_type: int, flags: int, body: bytes) -> None:
        """Send one request and read its ACK, synchronously (module docstring).

        Raises NetlinkError when the kernel refuses it.
        """
        if self._now is None:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            s.settimeout(1.0)  # the ACK is queued before send returns; never wait long
            s.bind((0, 0))
            self._now = s
        self._now_seq = self._now_seq % 0x7FFFFFFF + 1
        seq = self._now_seq
        self._now.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body)
        while True:
            reply = self._now.recv(65536)
            off = 0
            while off + _NLMSGHDR.size <= len(reply):
                length, kind, _flags, rseq, _pid = _NLMSGHDR.unpack_from(reply, off)
                if kind == NLMSG_ERROR and rseq == seq:
                    (error,) = struct.unpack_from("=i", reply, off + _NLMSGHDR.size)
                    if error:
                        raise NetlinkError(-error, os.strerror(-error))
                    return
                off += max(length + (-length % 4), _NLMSGHDR.size)

    def group_replace_now(self, nh_id: int, members: list[int], protocol: int) -> None:
        """:meth:`group_replace` as a plain call: the failover's one operation."""
        self.request_now(RTM_NEWNEXTHOP, _REPLACE, group_body(nh_id, members, protocol))

    def close(self) -> None:
        if self._now is not None:
            self._now.close()
            self._now = None

    async def nexthop_delete(self, nh_id: int) -> None:
        body = _NHMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _u32(NHA_ID, nh_id)
        self.request_now(RTM_DELNEXTHOP, _DELETE, body)

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
        self.route_replace_now(dst, nh_id, prefsrc, protocol, priority)

    def route_replace_now(
        self, dst: str, nh_id: int, prefsrc: str | None, protocol: int, priority: int = 0
    ) -> None:
        """:meth:`route_replace` as a plain call (a remote detour's operation)."""
        # IPv4 replaces only the route with the same metric: the metric-0
        # primary and the standby at a higher metric live side by side.
        body = route_body(dst, protocol, nh_id, prefsrc, priority or None)
        self.request_now(RTM_NEWROUTE, _REPLACE, body)

    async def route_delete(self, dst: str, protocol: int, priority: int | None = None) -> None:
        """Delete our route to *dst*; with *priority*, only the one with that metric
        (without, the kernel deletes the first match, the lowest metric)."""
        self.request_now(RTM_DELROUTE, _DELETE, route_body(dst, protocol, None, None, priority))

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
