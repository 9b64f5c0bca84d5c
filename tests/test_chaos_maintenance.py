"""The steady state's no-maintenance-window probe: no experiment while an operator has a
maintenance window open on a node (its loop records faults and does not act on them).

The node's ``/v1/incidents`` answer is served over real HTTP and read with curl, as the
runner reads a node (``Mesh.get``); the window in it is the agent's own
(:func:`mesh_agent.mapek.maintenance.window`, ``as_dict``). The whole path with a real
agent that reads the window file is ``test_mapek_netns.py`` (test-full-lab).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
from mesh_agent.mapek import maintenance
from meshcore_testkit.httpstub import json_server
from meshcore_tools.chaos import experiment
from meshcore_tools.chaos.mesh import Mesh
from meshcore_tools.chaos.nodes import Nodes
from meshcore_tools.chaos.runner import Runner

pytestmark = pytest.mark.skipif(shutil.which("curl") is None,
                                reason="the runner reads nodes with curl, not installed here")

STATE: dict[str, Any] = {"nodes": {"n1": {"node_address": "127.0.0.1", "links": []}},
                         "links": []}


@pytest.fixture
def agent_api() -> Iterator[dict[str, Any]]:
    """A local HTTP server answering /v1/incidents with ``state["incidents"]`` (and 404
    for anything else, as an agent that predates the endpoint would)."""
    state: dict[str, Any] = {"incidents": None, "paths": []}

    def respond(path: str) -> tuple[int, bytes]:
        state["paths"].append(path)
        found = path.startswith("/v1/incidents") and state["incidents"] is not None
        return (200 if found else 404), json.dumps(state["incidents"] if found else {}).encode()

    with json_server(respond) as url:
        state["url"] = url
        yield state


def answer(window: maintenance.Window | None) -> dict[str, Any]:
    """The agent's /v1/incidents answer (AgentView.incidents) with *window* open."""
    return {"node": "n1", "enabled": True, "armed": True, "mode": "enforce",
            "policy": "fixed", "thresholds": {}, "active_actions": [], "action_stats": [],
            "knowledge": "ok", "incidents": [],
            "maintenance": window.as_dict() if window is not None else None}


def mesh(url: str) -> Mesh:
    return Mesh(STATE, lambda n: [], Nodes(lambda n: []), api=url)


def test_the_mesh_reads_each_nodes_open_window(agent_api: dict[str, Any]) -> None:
    m = mesh(agent_api["url"])
    try:
        window = maintenance.window(1800, "firmware upgrade", time.time())
        agent_api["incidents"] = answer(window)
        assert m.maintenance() == {"n1": window.as_dict()}
        assert agent_api["paths"][-1] == "/v1/incidents?limit=1"  # one incident, not 100
        agent_api["incidents"] = answer(None)
        assert m.maintenance() == {}
        agent_api["incidents"] = None  # an older agent: no such endpoint, so no window
        assert m.maintenance() == {}
    finally:
        m.close()


def test_an_open_window_fails_the_steady_state_so_nothing_is_injected(
        agent_api: dict[str, Any]) -> None:
    exp = experiment.validate({
        "version": 1, "title": "window", "seed": 1,
        # Only this probe, and a short deadline: the window would outlast any wait.
        "steady_state": {"agents_ready": False, "all_pairs_routed": False,
                         "probes_reachable": False, "no_alerts_firing": False,
                         "timeout_s": 0.5},
        "faults": [{"class": "silent_cut", "duration_s": 1.0}],
        "probes": [{"src": "n1", "dst": "n1"}],
    })
    window = maintenance.window(1800, "firmware upgrade", time.time())
    agent_api["incidents"] = answer(window)
    m = mesh(agent_api["url"])
    try:
        r = Runner(exp, m, name="t")
        assert r.steady_state("before") is False
        [probe] = r.j.doc["steady_states"]["before"]["probes"]
        assert probe["activity"]["name"] == "no-maintenance-window"
        assert probe["tolerance_met"] is False
        assert probe["output"] == {"open": {"n1": window.as_dict()}}
        agent_api["incidents"] = answer(None)  # the operator closed it
        assert r.steady_state("after") is True
        # A whole run says why it injected nothing.
        agent_api["incidents"] = answer(window)
        said: list[str] = []
        doc = Runner(exp, m, name="t", log=said.append).run().journal
        assert doc["status"] == "failed" and doc["run"] == []
        assert said == ["steady state does not hold (no-maintenance-window): nothing injected"]
    finally:
        m.close()


def test_the_probe_is_on_by_default_and_can_be_turned_off() -> None:
    exp = experiment.validate({"version": 1, "title": "t", "faults": [
        {"class": "silent_cut", "duration_s": 1.0}]})
    assert exp["steady_state"]["no_maintenance_window"] is True
    exp = experiment.validate({"version": 1, "title": "t",
                               "steady_state": {"no_maintenance_window": False},
                               "faults": [{"class": "silent_cut", "duration_s": 1.0}]})
    assert exp["steady_state"]["no_maintenance_window"] is False
