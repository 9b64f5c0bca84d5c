"""The agent's datagram dispatch: any bytes on any interface never raise or change state."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pki import CA

from mesh_agent.agent import Agent
from mesh_agent.config import parse_config


def test_dispatch_random_datagrams(ca: CA) -> None:
    cfg = parse_config({"node_name": "a", "node_address": "10.77.0.1"})
    agent = Agent(cfg, ca.identity("a"))
    agent.sensor.add_interface("mesh0")
    agent.lsdb.originate({}, 1.8e9)

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
            st.binary(max_size=200).map(lambda b: b"MH\x01\x00" + b),
        ),
        st.sampled_from(["mesh0", "mesh9", "eth0"]),
        st.sampled_from(["10.98.0.1", "0.0.0.0"]),
    )
    @settings(max_examples=400, suppress_health_check=list(HealthCheck), deadline=None)
    def check(data: bytes, ifname: str, src: str) -> None:
        agent._dispatch(ifname, data, src)
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
    agent._note_lag(0.0)
    assert agent.sensor.advertised_interval_s == 0.05
    agent._note_lag(0.3)  # starved for 300 ms: ask peers for 50 + 600 ms, capped at 500
    assert agent.sensor.advertised_interval_s == 0.5
    now[0] += 10.0  # one half-life later, the worst lag counts half
    agent._note_lag(0.0)
    assert agent.sensor.advertised_interval_s == pytest.approx(0.05 + 2 * 0.15)
    now[0] += 100.0
    agent._note_lag(0.0)
    assert agent.sensor.advertised_interval_s == pytest.approx(0.05, abs=1e-3)
