"""batman-adv's neighbour and originator tables over generic netlink, without batctl.

batctl refuses to run unless it is root (its own euid check, before any
request), and the agent runs as an unprivileged user. The kernel itself only
asks for CAP_NET_ADMIN on the batadv family's dumps (GENL_UNS_ADMIN_PERM),
which the agent's unit grants. So the agent asks the kernel directly, with
pyroute2's generic netlink socket: BATADV_CMD_GET_NEIGHBORS and
BATADV_CMD_GET_ORIGINATORS on the mesh interface (BATADV_ATTR_MESH_IFINDEX),
the requests batctl's ``neighbors_json`` and ``originators_json`` send.

Each entry becomes the dict batctl prints for it (attribute names in lower
case without the BATADV_ATTR_ prefix, a flag as true, FLAG_BEST as "best"), so
:meth:`mesh_agent.link.batman.BatmanSensor.update` reads either source.
Numbers from include/uapi/linux/batman_adv.h (the enums batctl 2023.0 ships).
"""

from __future__ import annotations

import socket
from typing import Any

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, genlmsg
from pyroute2.netlink.generic import AsyncGenericNetlinkSocket

from mesh_agent.config import LinkConfig
from mesh_agent.link.batman_io import BatctlError, Fetch

FAMILY = "batadv"
BATADV_CMD_GET_ORIGINATORS = 8
BATADV_CMD_GET_NEIGHBORS = 9
_PREFIX = "BATADV_ATTR_"
# enum batadv_nl_attrs, in order (value = position); unused ones stay opaque.
_ATTRS = (
    ("UNSPEC", "none"), ("VERSION", "asciiz"), ("ALGO_NAME", "asciiz"),
    ("MESH_IFINDEX", "uint32"), ("MESH_IFNAME", "asciiz"), ("MESH_ADDRESS", "l2addr"),
    ("HARD_IFINDEX", "uint32"), ("HARD_IFNAME", "asciiz"), ("HARD_ADDRESS", "l2addr"),
    ("ORIG_ADDRESS", "l2addr"), ("TPMETER_RESULT", "uint8"), ("TPMETER_TEST_TIME", "uint32"),
    ("TPMETER_BYTES", "uint64"), ("TPMETER_COOKIE", "uint32"), ("PAD", "hex"),
    ("ACTIVE", "flag"), ("TT_ADDRESS", "l2addr"), ("TT_TTVN", "uint8"),
    ("TT_LAST_TTVN", "uint8"), ("TT_CRC32", "uint32"), ("TT_VID", "uint16"),
    ("TT_FLAGS", "uint32"), ("FLAG_BEST", "flag"), ("LAST_SEEN_MSECS", "uint32"),
    ("NEIGH_ADDRESS", "l2addr"), ("TQ", "uint8"), ("THROUGHPUT", "uint32"),
    ("BANDWIDTH_UP", "uint32"), ("BANDWIDTH_DOWN", "uint32"), ("ROUTER", "l2addr"),
)  # fmt: skip


class batadv_msg(genlmsg):  # type: ignore[misc]
    """A batadv generic netlink message with the attributes the tables use."""

    prefix = _PREFIX
    nla_map = tuple((_PREFIX + name, kind) for name, kind in _ATTRS)


def entry(msg: Any) -> dict[str, Any]:
    """One dump message as batctl's JSON object."""
    out: dict[str, Any] = {}
    for name, value in msg["attrs"]:
        if not name.startswith(_PREFIX) or name.endswith(("UNSPEC", "PAD")):
            continue
        key = name[len(_PREFIX) :].lower()
        out["best" if key == "flag_best" else key] = True if value is None else value
    return out


class BatmanNetlink:
    """One generic netlink socket to the batadv family, reopened after a failure."""

    def __init__(self, mesh_interface: str) -> None:
        self.mesh_interface = mesh_interface
        self._sock: AsyncGenericNetlinkSocket | None = None

    async def _socket(self) -> AsyncGenericNetlinkSocket:
        if self._sock is None:
            sock = AsyncGenericNetlinkSocket()
            try:
                await sock.bind(FAMILY, batadv_msg)
            except Exception as exc:  # no batman-adv module, no permission
                sock.close()
                raise BatctlError(f"generic netlink family {FAMILY}: {exc}") from exc
            self._sock = sock
        return self._sock

    async def dump(self, cmd: int) -> list[dict[str, Any]]:
        try:
            ifindex = socket.if_nametoindex(self.mesh_interface)
        except OSError as exc:
            raise BatctlError(f"{self.mesh_interface}: {exc}") from exc
        sock = await self._socket()
        msg = batadv_msg()
        msg["cmd"] = cmd
        msg["version"] = 1
        msg["attrs"] = [[_PREFIX + "MESH_IFINDEX", ifindex]]
        try:
            replies = await sock.nlm_request(
                msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST | NLM_F_DUMP
            )
            return [entry(m) async for m in replies]
        except Exception as exc:  # the socket is reopened on the next poll
            self.close()
            raise BatctlError(f"{FAMILY} dump {cmd}: {exc}") from exc

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def netlink_fetch(link: LinkConfig) -> Fetch:
    """Read the neighbour and originator tables of ``link.mesh_interface`` from the kernel."""
    nl = BatmanNetlink(link.mesh_interface)

    async def fetch() -> tuple[Any, Any]:
        neighbors = await nl.dump(BATADV_CMD_GET_NEIGHBORS)
        originators = await nl.dump(BATADV_CMD_GET_ORIGINATORS)
        return neighbors, originators

    return fetch
