"""One agent in the test's own process, and a neighbour made of its cores alone.

For the tests that read the agent through its API or ``meshctl``: node ``a``
(the agent) meets node ``b`` on ``mesh0`` with no sockets and no sleeps.
"""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING

from mesh_agent.link.sensor import LinkSensor
from mesh_agent.link.wire import _inet_checksum
from mesh_agent.topology import LinkStateDB

from meshcore_testkit.pki import CA, PairKeysForTests

if TYPE_CHECKING:
    from mesh_agent.agent import Agent

B_NAME, B_ADDRESS = "b", "10.77.0.2"


def meet_b(agent: Agent, now: float) -> LinkSensor:
    """A two-way hello exchange with ``b`` on ``mesh0``: b is up in the agent's sensor."""
    agent.sensor.add_interface("mesh0")
    b = LinkSensor(B_NAME, B_ADDRESS, 0.05, 3, keys=PairKeysForTests(B_NAME))
    b.add_interface("mesh0")
    b.receive("mesh0", agent.sensor.build_hello("mesh0", now), "10.98.0.0", now)
    agent.sensor.receive("mesh0", b.build_hello("mesh0", now), "10.98.0.1", now)
    return b


def b_answers_echo(agent: Agent, now: float) -> None:
    """b's kernel answers the agent's echo probe on ``mesh0``: b is in echo mode."""
    for _addr, request in agent.sensor.echo_requests("mesh0", now):
        assert agent.sensor.receive_echo("mesh0", kernel_reply(request), now + 0.0001)


def kernel_reply(request: bytes, src: str = "10.78.0.1", dst: str = "10.78.0.0") -> bytes:
    """What the neighbour's kernel sends back, as our raw ICMP socket reads it."""
    icmp = bytearray(request)
    icmp[0] = 0  # echo reply
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", _inet_checksum(bytes(icmp)))
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0xC0,
        20 + len(icmp),
        1,
        0,
        64,
        1,
        0,
        bytes(int(x) for x in src.split(".")),
        bytes(int(x) for x in dst.split(".")),
    )
    return ip + bytes(icmp)


def adverts_with_b(agent: Agent, ca: CA, now: float) -> None:
    """The agent's own advert (listing b) and b's advert (listing the agent) in its LSDB."""
    agent.topology.originate({B_NAME: 1.0}, now)
    raw, _ = LinkStateDB(ca.identity(B_NAME, B_ADDRESS), B_ADDRESS, 30.0).originate(
        {agent.cfg.node_name: 1.0}, now)
    assert agent.topology.lsdb.receive(raw, now).accepted


def compute(agent: Agent) -> None:
    """What the compute loop does once: update the paths, sync the routes (observe mode)."""
    agent.routing.changed()
    generation = agent.view.schedule.start()
    asyncio.run(agent.routing.recompute())
    agent.view.schedule.finished(generation)
