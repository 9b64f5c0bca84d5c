"""The steady state's no-alerts-firing probe, against /api/v1/alerts answers recorded from a
real Prometheus (2.42) running the project's alert rules (roles/prometheus/files/rules) with
one node's targets down: MeshNodeDown pending (its ``for: 1m`` not over), then firing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from meshcore_testkit.httpstub import json_server
from meshcore_tools.chaos import experiment
from meshcore_tools.chaos.journal import Activity
from meshcore_tools.chaos.mesh import Mesh
from meshcore_tools.chaos.nodes import Nodes
from meshcore_tools.chaos.runner import Runner
from meshcore_tools.lab import prometheus

FIXTURES = Path(__file__).parent / "fixtures"


def recorded(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / f"prometheus_alerts_{name}.json").read_text()))


def test_only_firing_alerts_count_and_ignored_names_are_left_out() -> None:
    assert prometheus.firing(recorded("pending")["data"]) == []  # pending is not firing yet
    firing = recorded("firing")["data"]
    assert prometheus.firing(firing) == ["MeshNodeDown{node=n3}"]
    assert prometheus.firing(firing, ignore=["MeshNodeDown"]) == []


@pytest.fixture
def served() -> Iterator[dict[str, Any]]:
    """A local HTTP server answering /api/v1/alerts with whatever the test puts in ``body``."""
    state: dict[str, Any] = {"body": b""}
    with json_server(lambda path: (200 if path.startswith("/api/v1/alerts") else 404,
                                   state["body"])) as url:
        state["url"] = url
        yield state


def probe(prom: str | None, ignore: list[str], since: float | None = None) -> Activity:
    mesh = Mesh({"nodes": {}}, lambda n: [], Nodes(lambda n: []), prometheus=prom)
    act = Activity("probe", "no-alerts-firing")
    try:
        Runner._alerts(SimpleNamespace(mesh=mesh, alerts_since=since),  # type: ignore[arg-type]
                       act, ignore)
    finally:
        mesh.close()
    return act


def test_the_probe_fails_on_a_firing_alert_and_holds_on_a_pending_one(
        served: dict[str, Any]) -> None:
    ignore = experiment.schema("experiment")["properties"]["steady_state"]["properties"][
        "alerts_ignore"]["default"]
    served["body"] = json.dumps(recorded("firing")).encode()
    act = probe(served["url"], ignore)
    assert act.tolerance_met is False and act.output["firing"] == ["MeshNodeDown{node=n3}"]
    served["body"] = json.dumps(recorded("pending")).encode()
    act = probe(served["url"], ignore)
    assert act.tolerance_met is True and act.output["firing"] == []


def test_no_prometheus_is_a_skip_said_in_the_journal_and_a_dead_one_a_failure() -> None:
    act = probe(None, [])
    assert act.tolerance_met is True
    assert act.output == {"skipped": "no Prometheus URL configured (--prometheus)"}
    act = probe("http://127.0.0.1:9", [])  # the discard port: nothing listens
    assert act.tolerance_met is False and "error" in act.output


def test_an_alert_raised_since_the_run_began_is_recorded_not_counted(
        served: dict[str, Any]) -> None:
    """MeshNodeDown{n3} became active at 2026-12-04T01:16:47.09Z (the recording): a run
    that began before that raised it (a fault of its own, a failover storm's 5-minute
    window that outlives the fault); one that began after finds it already firing."""
    firing = recorded("firing")
    began = prometheus.active_at(firing["data"]["alerts"][0])
    assert began == pytest.approx(1796347007.092635, abs=1e-5)
    served["body"] = json.dumps(firing).encode()
    act = probe(served["url"], [], since=began - 60)
    assert act.tolerance_met is True and act.output["firing"] == []
    assert act.output["raised_by_the_run"] == ["MeshNodeDown{node=n3}"]
    act = probe(served["url"], [], since=began + 60)
    assert act.tolerance_met is False and act.output["firing"] == ["MeshNodeDown{node=n3}"]
    assert act.output["raised_by_the_run"] == []
    # no start known: counted whatever the run's start
    alerts = {"alerts": [{**firing["data"]["alerts"][0], "activeAt": "garbage"}]}
    assert prometheus.firing(alerts, before=began) == ["MeshNodeDown{node=n3}"]
    assert prometheus.firing(alerts, since=0.0) == []
    assert prometheus.active_at({"activeAt": "2026-12-04T01:16:47+02:00"}) == pytest.approx(
        began - 7200 - 0.092635, abs=1e-5)
