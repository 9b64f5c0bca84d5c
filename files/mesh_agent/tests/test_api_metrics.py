"""API and metrics over an Agent fed by hand (no kernel: observe mode; no sockets but
the one loopback listener of the server test)."""

from __future__ import annotations

import asyncio
import time
import urllib.request

from meshcore_testkit.inprocess import adverts_with_b, compute, meet_b
from meshcore_testkit.pki import CA, PairKeysForTests
from starlette.testclient import TestClient

from mesh_agent.agent import Agent
from mesh_agent.api import create_app
from mesh_agent.api.server import MAIN_LOOP_S, guarded_server
from mesh_agent.config import parse_config
from mesh_agent.link.sensor import LinkSensor
from mesh_agent.topology import LinkStateDB


def make_agent(ca: CA) -> Agent:
    cfg = parse_config({"node_name": "a", "node_address": "10.77.0.1", "mode": "observe"})
    agent = Agent(cfg, ca.identity("a", "10.77.0.1"))
    agent.sensor.keys = PairKeysForTests("a")
    return agent


def client_of(agent: Agent) -> TestClient:
    return TestClient(create_app(agent.view, agent.metrics.registry, agent.events))


def test_health_ready_metrics_views(ca: CA) -> None:
    agent = make_agent(ca)
    client = client_of(agent)
    assert client.get("/healthz").json() == {"status": "ok", "node": "a"}
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["neighbors_known"] is False
    # The 503 names what fails, with what tells a flicker from a stuck agent.
    assert set(r.json()["failing"]) == {k for k, ok in r.json()["checks"].items() if not ok}
    assert r.json()["detail"]["neighbors_up"] == 0
    assert r.json()["detail"]["path_computations_total"] == 0

    # Neighbour b appears on mesh0 (two-way hello exchange, fake clock).
    now = time.monotonic()
    meet_b(agent, now)
    assert [n.state for n in agent.sensor.neighbors()] == ["up"]
    # Our advert and b's advert are in the LSDB.
    adverts_with_b(agent, ca, now)
    compute(agent)

    r = client.get("/readyz")
    assert r.status_code == 200, r.json()
    assert r.json()["failing"] == [] and r.json()["detail"]["paths_pending_seconds"] == 0.0
    nbs = client.get("/v1/neighbors").json()["neighbors"]
    assert nbs[0]["name"] == "b" and nbs[0]["interface"] == "mesh0" and nbs[0]["cost"] == 1.0
    topo = client.get("/v1/topology").json()
    assert topo["edges"] == [{"a": "a", "b": "b", "cost": 1.0}]
    paths = client.get("/v1/paths").json()
    assert paths["destinations"]["b"]["primary_next_hop"] == "b"
    assert paths["destinations"]["b"]["installed"] is True
    assert set(paths["coverage"]) >= {"destinations_with_backup", "primary_links_protected"}
    one = client.get("/v1/paths/b").json()
    assert one["primary"] == ["a", "b"] and one["route"]["address"] == "10.77.0.2"
    assert client.get("/v1/paths/nowhere").status_code == 404

    text = client.get("/metrics").text
    for name in (
        "meshcore_neighbors_up",
        "meshcore_hellos_received_total",
        "meshcore_adverts_rejected_total",
        "meshcore_lsdb_adverts",
        "meshcore_topology_nodes",
        "meshcore_destinations_reachable",
        "meshcore_failover_duration_seconds_bucket",
        "meshcore_path_computation_seconds_count",
        "meshcore_converged",
        "meshcore_protection_coverage_ratio",
        "meshcore_routes_installed",
    ):
        assert name in text, name
    assert 'meshcore_adverts_rejected_total{reason="replayed"} 0.0' in text
    assert "meshcore_topology_nodes 2.0" in text
    assert "meshcore_converged 1.0" in text  # the same readiness as /readyz
    schema = client.get("/openapi.json").json()
    plan = schema["paths"]["/v1/plan"]["get"]["parameters"][0]["schema"]
    assert (plan["minimum"], plan["maximum"]) == (1, 1000)  # the bounds are in the schema
    assert "404" in schema["paths"]["/v1/paths/{dst}"]["get"]["responses"]


def test_planning_report_on_the_lsdb(ca: CA) -> None:
    """A line a - b - c: two bridges, no pair protected; a-c would protect all 3 pairs."""
    agent = make_agent(ca)
    now = time.monotonic()
    agent.topology.originate({"b": 1.0}, now)
    for name, addr, links in (
        ("b", "10.77.0.2", {"a": 1.0, "c": 1.0}),
        ("c", "10.77.0.3", {"b": 1.0}),
    ):
        raw, _ = LinkStateDB(ca.identity(name, addr), addr, 30.0).originate(links, now)
        assert agent.topology.lsdb.receive(raw, now).accepted
    client = client_of(agent)
    body = client.get("/v1/plan").json()
    assert body["summary"]["pairs_two_edge_connected"] == 0.0
    assert body["summary"]["bridges"] == 2.0
    assert [({link["u"], link["v"]}, link["pairs_protected"]) for link in body["links"]] == [
        ({"a", "c"}, 3)
    ]
    assert client.get("/v1/plan?max_links=0").status_code == 422


def test_metric_naming_conventions(ca: CA) -> None:
    agent = make_agent(ca)
    for metric in agent.metrics.registry.collect():
        assert metric.name.startswith("meshcore_"), metric.name
        if metric.type == "counter":
            # prometheus-client strips _total from the family name; samples carry it.
            assert all(s.name.endswith(("_total", "_created")) for s in metric.samples)
        # Closed sets only: never a node or node-pair label (the self-healing loop's
        # class, action, outcome and signal are enums of mesh_agent.mapek).
        for sample in metric.samples:
            assert set(sample.labels) <= {"reason", "interface", "kind", "le", "socket", "class",
                                          "action", "outcome", "signal"}, sample


def test_certificate_validity_window_is_exported(ca: CA) -> None:
    agent = make_agent(ca)
    cert = agent.identity.cert
    sample = agent.metrics.registry.get_sample_value
    value = sample("meshcore_identity_cert_expiry_timestamp_seconds")
    assert value == cert.not_valid_after_utc.timestamp()
    # The lab and test CAs issue certificates valid for days, not already expired.
    assert value > time.time()
    # The start too: the alert rule reads the part of the lifetime left.
    start = sample("meshcore_identity_cert_not_before_timestamp_seconds")
    assert start == cert.not_valid_before_utc.timestamp()
    assert start < time.time() < value
    text = client_of(agent).get("/metrics").text
    assert "meshcore_identity_cert_expiry_timestamp_seconds" in text
    assert "meshcore_identity_cert_not_before_timestamp_seconds" in text


def test_one_metrics_path_reads_each_core_once(ca: CA) -> None:
    """Each counter is the core's own number, read at scrape time: nothing counted twice."""
    agent = make_agent(ca)
    agent.sensor.add_interface("mesh0")
    now = time.monotonic()
    b = LinkSensor("b", "10.77.0.2", 0.05, 3, keys=PairKeysForTests("b"))
    b.add_interface("mesh0")
    for i in range(5):
        hello = agent.sensor.build_hello("mesh0", now + i * 0.05)
        b.receive("mesh0", hello, "10.98.0.0", now + i * 0.05)
        agent.sensor.receive("mesh0", b.build_hello("mesh0", now + i * 0.05), "10.98.0.1",
                             now + i * 0.05)
    agent.sensor.receive("mesh0", b"garbage", "10.98.0.1", now)
    reg = agent.metrics.registry

    def value(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(name, labels)

    assert value("meshcore_hellos_sent_total") == agent.sensor.tx_total == 5
    assert value("meshcore_hellos_received_total") == agent.sensor.rx_total == 5
    assert value("meshcore_hellos_dropped_total", reason="malformed") == 1
    assert value("meshcore_neighbors_up") == 1
    agent.topology.originate({"b": 1.0}, now)
    raw, _ = LinkStateDB(ca.identity("b", "10.77.0.2"), "10.77.0.2", 30.0).originate(
        {"a": 1.0}, now)
    agent._on_advert("mesh0", (raw, "10.98.0.1", now, 255))
    agent._on_advert("mesh0", (raw, "10.98.0.1", now, 255))  # the flooding echo
    agent._on_advert("mesh0", (b"MA junk", "10.98.0.1", now, 255))
    assert value("meshcore_adverts_received_total") == 3
    assert value("meshcore_adverts_accepted_total") == 1
    assert value("meshcore_adverts_duplicate_total") == 1
    assert value("meshcore_adverts_rejected_total", reason="malformed") == 1
    assert value("meshcore_adverts_originated_total") == 1
    compute(agent)
    # Two facts, two numbers: what the path table reaches, what the programmer holds.
    assert value("meshcore_destinations_reachable") == len(agent.view.paths.choices()) == 1
    assert value("meshcore_routes_installed") == agent.view.routes.route_count()
    assert value("meshcore_route_detours_total") == agent.view.routes.detours_total == 0
    agent.view.routes.detours_total = 2  # as two remote detours leave it: read, not copied
    assert value("meshcore_route_detours_total") == 2


def test_every_family_is_there_before_anything_happened() -> None:
    """A collector without a view (a scrape before the agent is built) shows every family."""
    from mesh_agent.metrics import Metrics

    names = {m.name for m in Metrics().registry.collect()}
    assert {"meshcore_hellos_received", "meshcore_failover_duration_seconds",
            "meshcore_adverts_rejected", "meshcore_converged",
            "meshcore_route_detours"} <= names


def test_the_server_wakes_once_a_second_answers_and_stops(ca: CA) -> None:
    """uvicorn's main loop ticks every MAIN_LOOP_S, not every 0.1 s (issue 16: its tick
    was a third of an idle agent's wake-ups); the server still answers, and a stop
    still ends it within a tick."""
    agent = make_agent(ca)
    server, sockets = guarded_server(
        create_app(agent.view, agent.metrics.registry, agent.events), [("127.0.0.1", 0)],
        lambda reason: None)
    port = sockets[0].getsockname()[1]
    ticks = 0
    on_tick = server.on_tick

    async def counted(counter: int) -> bool:
        nonlocal ticks
        ticks += 1
        return await on_tick(counter)

    server.on_tick = counted  # type: ignore[method-assign]

    def get(path: str) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return int(r.status)

    async def run() -> tuple[int, float, int]:
        task = asyncio.create_task(server.serve(sockets=sockets))
        while not server.started:
            await asyncio.sleep(0.01)
        status = await asyncio.to_thread(get, "/healthz")
        await asyncio.sleep(2.5 * MAIN_LOOP_S)
        seen = ticks
        server.should_exit = True
        t_stop = time.monotonic()
        await asyncio.wait_for(task, 5 * MAIN_LOOP_S)
        return status, time.monotonic() - t_stop, seen

    try:
        status, stop_s, seen = asyncio.run(run())
    finally:
        for sock in sockets:
            sock.close()
    assert status == 200
    # About 3 ticks in 2.5 s (uvicorn's own loop: about 25).
    assert 1 <= seen <= 5, seen
    assert stop_s <= MAIN_LOOP_S + 1.0, stop_s  # the next tick sees the stop
