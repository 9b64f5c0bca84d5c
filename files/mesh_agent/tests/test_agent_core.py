"""The agent's datagram dispatch: any bytes on any interface never raise or change state."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshcore_testkit.pki import CA, PairKeysForTests

from mesh_agent.agent import Agent
from mesh_agent.config import parse_config


def test_dispatch_random_datagrams(ca: CA) -> None:
    cfg = parse_config({"node_name": "a", "node_address": "10.77.0.1"})
    agent = Agent(cfg, ca.identity("a", "10.77.0.1"))
    agent.sensor.add_interface("mesh0")
    agent.lsdb.originate({}, 100.0)

    def state() -> tuple[object, ...]:
        return (
            [(n.name, n.state) for n in agent.sensor.neighbors()],
            {o: e.raw for o, e in agent.lsdb.entries().items()},
            agent._generation,
        )

    before = state()

    @given(
        st.one_of(
            st.binary(max_size=200),
            st.binary(max_size=200).map(lambda b: b"MA" + b),
            st.binary(max_size=200).map(lambda b: b"MA\x02\x00" + b),
            st.binary(max_size=200).map(lambda b: b"MH\x02\x00" + b),
        ),
        st.sampled_from(["mesh0", "mesh9", "eth0"]),
        st.sampled_from(["10.98.0.1", "0.0.0.0"]),
    )
    @settings(max_examples=400, suppress_health_check=list(HealthCheck), deadline=None)
    def check(data: bytes, ifname: str, src: str) -> None:
        agent._dispatch(ifname, data, src)  # a hello socket
        agent._on_advert(ifname, data, src)  # an advert socket
        assert state() == before

    check()


def test_spf_backoff_is_immediate_when_quiet_and_doubles_in_a_storm(ca: CA) -> None:
    now = [100.0]
    cfg = parse_config({"node_name": "a", "node_address": "10.77.0.1"})
    agent = Agent(cfg, ca.identity("a"), clock=lambda: now[0])
    assert agent._spf_delay() == 0.0  # first change: compute at once
    delays = []
    for _ in range(7):  # a storm: a change every 10 ms
        now[0] += 0.01
        delays.append(agent._spf_delay())
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    now[0] += 5.0  # quiet again
    assert agent._spf_delay() == 0.0


def test_late_hello_timer_stretches_the_announced_interval(ca: CA) -> None:
    now = [0.0]
    cfg = parse_config({"node_name": "a", "node_address": "10.77.0.1", "hello_interval_ms": 50})
    agent = Agent(cfg, ca.identity("a"), clock=lambda: now[0])
    agent._note_lag(0.3)  # still starting up (our own imports): not starvation
    assert agent.sensor.advertised_interval_s == 0.05
    now[0] += 10.0
    agent._note_lag(0.04)  # jitter within one interval: ignored
    assert agent.sensor.advertised_interval_s == 0.05
    # 90 ms late (a CPU burst): the hello still lands within the peers' 3 x 50 ms
    agent._note_lag(0.09)
    assert agent.sensor.advertised_interval_s == 0.05
    agent._note_lag(0.3)  # starved for 300 ms: ask peers for 50 + 600 ms, capped at 500
    assert agent.sensor.advertised_interval_s == 0.5
    now[0] += 1.0  # one half-life later, the worst lag counts half
    agent._note_lag(0.0)
    assert agent.sensor.advertised_interval_s == pytest.approx(0.05 + 2 * 0.15)
    now[0] += 100.0
    agent._note_lag(0.0)
    assert agent.sensor.advertised_interval_s == pytest.approx(0.05, abs=1e-3)


def test_advert_without_the_back_link_fails_over_before_our_own_timer(ca: CA) -> None:
    """A silent cut seen first by the far end: its advert drops us, we switch at once.

    Square a-b-d-c-a: a reaches d through b (cheaper) with c as the backup. b's
    hello timer fires first and it floods an advert without a; that advert reaches
    a around the square while b still looks alive to a's own sensor. a must move
    d (and b's other destinations) to the prepared backup now, without a recompute.
    """
    import asyncio

    from mesh_agent.link.sensor import LinkSensor
    from mesh_agent.topology.lsdb import LinkStateDB

    now = [100.0]
    wall = 1.8e9
    cfg = parse_config({"node_name": "a", "node_address": "10.77.0.1", "mode": "observe"})
    agent = Agent(cfg, ca.identity("a", "10.77.0.1"), clock=lambda: now[0], wall=lambda: wall + 1)
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
    dbs = {
        n: LinkStateDB(ca.identity(n, f"10.77.0.{i}"), f"10.77.0.{i}", 60.0)
        for i, n in enumerate("bcd", 2)
    }
    agent.lsdb.originate({"b": 1.0, "c": 5.0}, now[0])
    adverts = {
        "b": dbs["b"].originate({"a": 1.0, "d": 1.0}, now[0])[0],
        "c": dbs["c"].originate({"a": 5.0, "d": 5.0}, now[0])[0],
        "d": dbs["d"].originate({"b": 1.0, "c": 5.0}, now[0])[0],
    }
    for raw in adverts.values():
        assert agent.lsdb.receive(raw, now[0]).accepted
    agent.paths.update(agent.lsdb.graph())
    assert agent.paths.get("d").primary_next_hop == "b"  # type: ignore[union-attr]
    assert agent.paths.failover("b") == {"b": "c", "d": "c"}
    cut = dbs["b"].originate({"d": 1.0}, now[0])[0]  # b lost a

    async def scenario() -> None:
        agent._on_advert("mesh1", cut, "10.98.1.2")  # around the square, via c
        assert not agent._failover_idle.is_set()  # the compute loop would wait
        for _ in range(5):
            await asyncio.sleep(0)
        assert agent._failover_idle.is_set()
        # The same advert again (or a refresh of it) does not fail over twice.
        first = agent.last_failover
        agent._check_back_link("b")
        assert agent._failovers == 0 and agent.last_failover is first

    asyncio.run(scenario())
    assert agent.last_failover is not None
    assert agent.last_failover["neighbor"] == "b"
    assert agent.last_failover["reason"] == "advert"
    assert agent.last_failover["destinations"] == 2
    assert "b" in agent.sensor.best_links()  # the sensor's own verdict still pending
