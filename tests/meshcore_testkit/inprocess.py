"""One agent in the test's own process, and a neighbour made of its cores alone.

For the tests that read the agent through its API or ``meshctl``: node ``a``
(the agent) meets node ``b`` on ``mesh0`` with no sockets and no sleeps.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from mesh_agent.link.sensor import LinkSensor
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
