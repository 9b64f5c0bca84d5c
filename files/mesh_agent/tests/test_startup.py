"""Start-up pacing: the API is built after the routing settled, or at the latest deadline."""

from __future__ import annotations

from mesh_agent.startup import API_LATEST_S, API_QUIET_S, ApiPacing


def test_not_before_the_routing_is_ready() -> None:
    p = ApiPacing(100.0)
    assert not p.due(100.0, False, 0)
    assert not p.due(100.0 + API_QUIET_S + 1, False, 0)


def test_due_once_ready_and_quiet() -> None:
    p = ApiPacing(0.0)
    assert not p.due(0.5, True, 3)  # the graph just changed
    assert not p.due(0.5 + API_QUIET_S / 2, True, 3)
    assert p.due(0.5 + API_QUIET_S, True, 3)


def test_each_topology_change_restarts_the_quiet_time() -> None:
    p = ApiPacing(0.0)
    assert not p.due(1.0, True, 1)
    assert not p.due(1.0 + API_QUIET_S - 0.1, True, 2)
    assert not p.due(1.0 + API_QUIET_S + 0.1, True, 2)
    assert p.due(1.0 + 2 * API_QUIET_S, True, 2)


def test_due_at_the_latest_deadline_whatever_the_routing_does() -> None:
    p = ApiPacing(10.0)
    for i in range(int(API_LATEST_S)):
        assert not p.due(10.0 + i, False, i)
    assert p.due(10.0 + API_LATEST_S, False, 99)
    assert p.due_at == 10.0 + API_LATEST_S


def test_stays_due() -> None:
    p = ApiPacing(0.0, quiet_s=0.0)
    assert p.due(0.0, True, 0)
    assert p.due(0.0, False, 5)
