"""The shell wired to its cores: what arrives on a socket reaches the right core and action.

The rules themselves are tested on their cores (test_topology_core.py,
test_failover_policy.py, test_stretch_and_schedule.py, test_link*.py); these
tests only check that the asyncio shell passes inputs and outputs between
them, with no sockets and no kernel (observe mode).
"""

from __future__ import annotations

import asyncio

from meshcore_testkit.pki import CA, PairKeysForTests

from mesh_agent.agent import Agent
from mesh_agent.config import parse_config
from mesh_agent.link.sensor import LinkSensor
from mesh_agent.topology.lsdb import LinkStateDB


def test_an_advert_without_the_back_link_fails_over_before_our_own_timer(ca: CA) -> None:
    """A silent cut seen first by the far end: its advert drops us, we switch at once.

    Square a-b-d-c-a: a reaches d through b (cheaper) with c as the backup. b's
    hello timer fires first and it floods an advert without a; that advert reaches
    a around the square while b still looks alive to a's own sensor. a must move
    d (and b's other destinations) to the prepared backup now, without a recompute.
    """
    now = [100.0]
    cfg = parse_config({"node_name": "a", "node_address": "10.77.0.1", "mode": "observe"})
    agent = Agent(cfg, ca.identity("a", "10.77.0.1"), clock=lambda: now[0])
    agent.sensor.keys = PairKeysForTests("a")
    for ifname in ("mesh0", "mesh1"):
        agent.sensor.add_interface(ifname)
    peers = {"b": ("mesh0", "10.98.0.2"), "c": ("mesh1", "10.98.1.2")}
    for name, (ifname, addr) in peers.items():
        s = LinkSensor(name, f"10.77.0.{ord(name) - 96}", 0.05, 3, keys=PairKeysForTests(name))
        s.add_interface("x")
        s.receive("x", agent.sensor.build_hello(ifname, now[0]), "10.98.0.1", now[0])
        for _ in range(3):
            now[0] += 0.05
            agent.sensor.receive(ifname, s.build_hello("x", now[0]), addr, now[0])
    assert set(agent.sensor.best_links()) == {"b", "c"}
    dbs = {n: LinkStateDB(ca.identity(n, f"10.77.0.{i}"), f"10.77.0.{i}", 60.0)
           for i, n in enumerate("bcd", 2)}
    agent.topology.originate({"b": 1.0, "c": 5.0}, now[0])
    for raw in (dbs["b"].originate({"a": 1.0, "d": 1.0}, now[0])[0],
                dbs["c"].originate({"a": 5.0, "d": 5.0}, now[0])[0],
                dbs["d"].originate({"b": 1.0, "c": 5.0}, now[0])[0]):
        assert agent.topology.lsdb.receive(raw, now[0]).accepted
    agent.view.paths.update(agent.topology.graph())
    assert agent.view.paths.failover("b") == {"b": "c", "d": "c"}
    cut = dbs["b"].originate({"d": 1.0}, now[0] + 1)[0]  # b lost a

    async def scenario() -> None:
        agent._on_advert("mesh1", (cut, "10.98.1.2", now[0], 255))  # around the square, via c
        assert agent.routing.failovers_in_flight == 1  # the compute loop waits for it
        for _ in range(5):
            await asyncio.sleep(0)
        assert agent.routing.failovers_in_flight == 0
        # The same advert again (a refresh of it) does not fail over twice.
        agent._on_advert("mesh1", (dbs["b"].originate({"d": 1.0}, now[0] + 2)[0],
                                   "10.98.1.2", now[0], 255))
        assert agent.routing.failovers_in_flight == 0

    asyncio.run(scenario())
    last = agent.view.last_failover()
    assert last is not None
    assert (last["neighbor"], last["reason"], last["destinations"]) == ("b", "advert", 2)
    assert agent.view.failover.failovers_total == 1
    assert "b" in agent.sensor.best_links()  # the sensor's own verdict still pending
