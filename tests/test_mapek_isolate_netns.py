"""isolate_origin against a real flood: the chaos ``rogue`` fault, real agents, real etcd.

Three enforce-mode agents in a triangle, n0 - n1 - n2 - n0, each running the MAPE-K loop
(enforce, the fixed rule table) with leases from an etcd of three members, one in each
node's namespace on its node address (reached over the agents' own routes). The chaos
fault ``rogue`` on n1 (a compromised node) floods n0 and n2 with forged adverts through
the normal fault path. Expected, on at least one victim: an ``advert_storm`` incident on
``link:n1`` (the hop the flood came from, whatever origin the adverts claim), decided
``isolate_origin`` under a lease, a remediation event ``done`` whose decision is signed
with the victim's key, and n1's adverts then dropped unread
(``meshcore_adverts_isolated_total`` rising while the flood goes on). The isolation keeps
its lease (renewed) for as long as it lasts, so the one-per-2-hop-neighbourhood rule
holds for its whole life: the other victim is refused, asks again every lease TTL, and
is refused again while the flood goes on. Had both isolated n1, its own adverts would
reach neither and go stale after ``advert_max_age_s`` (60 s), cutting n1 off: so every
route must be as before at the end, which comes more than 60 s after the first
isolation. Once the flood stops, the isolation is released by its damping (within the
30 s rate window and its 60 s longest hold) and its lease handed back.

A second test cuts the link between the victims while one isolates n1 (the chaos
``silent_cut``): n1 becomes the only way between them, so the isolation is lifted.

About 3.5 minutes for both, in ``make test``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from mesh_agent.mapek.execute import MAX_HOLD_S
from mesh_agent.mapek.shell import decision_verifies
from mesh_agent.topology import encode_unsigned, signature_trailer
from meshcore_testkit.agents import AgentMesh, api
from meshcore_testkit.etcd import EtcdCluster
from meshcore_testkit.marks import requires_root
from meshcore_testkit.pki import CA
from meshcore_tools import netns
from meshcore_tools.chaos import faults
from meshcore_tools.chaos.faults import Fault, Topo
from meshcore_tools.chaos.nodes import inject, leftovers, netns_nodes, remove

pytestmark = [requires_root, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("etcd") is None,
                                 reason="needs etcd (Debian package etcd-server)")]
FLOOD_S = 45
TTL_S = 15
# After the flood: the storm's rate window, the damping's longest hold, two samples.
RELEASE_S = 30 + MAX_HOLD_S + 10


@pytest.fixture(scope="module")
def triangle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentMesh, CA]]:
    base = tmp_path_factory.mktemp("isolate")
    ca = CA.create()
    mesh = AgentMesh(3, [(0, 1), (1, 2), (0, 2)], base, prefix="mci", ca=ca)
    etcd = EtcdCluster(base / "etcd", hosts=[n.address for n in mesh.nodes],
                       wrap=lambda i: netns.exec_argv(mesh.nodes[i].ns))
    mapek = {"enabled": True, "mode": "enforce", "policy": "fixed", "interval_s": 5,
             "lease": {"endpoints": etcd.endpoints, "ttl_s": TTL_S}}
    try:
        mesh.lab.up()
        mesh.start_agents(ca, {n.name: {"mapek": mapek} for n in mesh.nodes})
        mesh.wait_for(mesh.converged, 120, "three agents converged")
        etcd.start()  # over the agents' routes
        try:
            yield mesh, ca
        finally:
            etcd.close()
    finally:
        mesh.destroy()


def remediations(mesh: AgentMesh, i: int) -> list[dict[str, object]]:
    _, body = api(mesh.nodes[i].ns, "/v1/events?kind=remediation&limit=50")
    return list(json.loads(body)["events"])


def isolated_total(mesh: AgentMesh, i: int) -> float:
    _, body = api(mesh.nodes[i].ns, "/metrics")
    line = next(x for x in body.splitlines() if x.startswith("meshcore_adverts_isolated_total "))
    return float(line.rsplit(" ", 1)[1])


def test_a_flooding_neighbour_is_isolated_under_a_lease(
        triangle: tuple[AgentMesh, CA], tmp_path: Path) -> None:
    mesh, _ca = triangle
    # the loops arm once their node has been ready 15 s
    time.sleep(25)
    routes = [mesh.routes(i) for i in range(3)]
    forged = [encode_unsigned("evil", "10.77.0.99", 1, (("n1", 1.0),), b"")
              + signature_trailer(b"\0" * 64)]
    path = tmp_path / "forged.bin"
    path.write_bytes(b"".join(len(d).to_bytes(4, "big") + d for d in forged))
    nodes = netns_nodes(lambda n: mesh.nodes[int(n[1:])].ns, mesh.base / "journal")
    fault = Fault("rogue", ("n1",), "isolate1",
                  {"rate": 200, "seconds": FLOOD_S, "mode": "file", "datagrams": str(path)})
    plan = faults.plan(fault, Topo(mesh.state))
    began = time.time()  # the events' wall clock (the namespaces share it)
    res = inject(nodes, fault, plan, began + FLOOD_S + 30, "isolate-test")
    assert all(r.data.get("ok") for r in res), [r.data for r in res]

    def applied(i: int, reason: str) -> list[dict[str, object]]:
        return [ev for ev in remediations(mesh, i) if ev["reason"] == reason
                and ev["detail"].get("result", "done") == "done"]  # type: ignore[union-attr]

    try:
        while time.time() - began < FLOOD_S - 3:
            time.sleep(1)
        done = {i: applied(i, "apply:isolate_origin") for i in (0, 2)}
        i = min((k for k in done if done[k]), key=lambda k: float(done[k][0]["wall"]),  # type: ignore[arg-type]
                default=0)
        other = 2 - i
        before = isolated_total(mesh, i)
        time.sleep(2)
        rising = isolated_total(mesh, i) > before  # dropped unread while the flood goes on
        incidents = json.loads(api(mesh.nodes[i].ns, "/v1/incidents")[1])["incidents"]
        second = json.loads(api(mesh.nodes[other].ns, "/v1/incidents")[1])["incidents"]
        # the flood over: released by its damping (its lease handed back)
        while not (undo := applied(i, "undo:isolate_origin")) \
                and time.time() - began < FLOOD_S + RELEASE_S:
            time.sleep(1)
    finally:
        assert all(r.data["ok"] for r in remove(nodes, fault, plan))
        assert leftovers(nodes, ["n0", "n1", "n2"]) == {}
    # every route as before: nothing went stale (n1's advert reaches the isolating victim
    # through the other), checked more than advert_max_age_s (60 s) after the last
    # isolation began
    assert done[i], {k: remediations(mesh, k) for k in (0, 2)}
    ev = done[i][0]
    took = round(float(ev["wall"]) - began, 1)  # type: ignore[arg-type]
    last = max(float(e["wall"]) for v in done.values() for e in v)  # type: ignore[arg-type]
    while time.time() - last <= 65:
        time.sleep(1)
    changed = sum(mesh.routes(k) != routes[k] for k in range(3))
    released = (round(float(undo[0]["wall"]) - began - FLOOD_S, 1)  # type: ignore[arg-type]
                if undo else None)
    print(json.dumps({"first": mesh.nodes[i].name, "isolated_after_s": took,
                      "released_after_flood_s": released,
                      "isolated_adverts": isolated_total(mesh, i),
                      "second_incidents": [(x["class"], x["target"], x["action"])
                                           for x in second]}))
    common = {"bench": "mapek_isolate", "topology": "triangle", "rate_per_s": 200,
              "interval_s": 5, "ttl_s": TTL_S, "flood_s": FLOOD_S}
    for figure, value, unit in (
            ("first_isolated_s", took, "s"),
            ("second_isolations_during_flood", len(done[other]), "isolations"),
            ("released_after_flood_s", released, "s"),
            ("nodes_with_routes_changed", changed, "nodes")):
        print(json.dumps({**common, "figure": figure, "unit": unit, "value": value}))
    # one victim isolated n1, and only one for as long as the flood went on
    assert len(done[i]) == 1 and done[other] == [], done
    detail = ev["detail"]
    assert isinstance(detail, dict)
    assert detail["target"] == "link:n1" and detail["lease_token"] is not None
    decision = detail["decision"]
    assert isinstance(decision, dict)
    assert decision["node"] == mesh.nodes[i].name and decision["neighbour"] == "n1"
    cert = x509.load_pem_x509_certificate(
        (mesh.base / mesh.nodes[i].name / "pki" / "node.crt").read_bytes())
    assert decision_verifies({"decision": decision, "signature": detail["signature"]},
                             cert.public_key())
    assert rising
    storm = [x for x in incidents if x["class"] == "advert_storm"]
    assert storm and storm[0]["target"] == "link:n1"
    assert storm[0]["action"] == {"kind": "isolate_origin", "outcome": "applied"}
    # the other victim asked and was refused (the neighbourhood rule)
    asked = [x["action"] for x in second if x["class"] == "advert_storm"]
    assert asked and all(a == {"kind": "isolate_origin", "outcome": "refused:no_lease"}
                         for a in asked), second
    assert undo and undo[0]["detail"]["reason"] == "released", remediations(mesh, i)  # type: ignore[index]
    assert changed == 0


def test_an_isolation_is_lifted_when_a_real_cut_leaves_the_flooder_the_only_way(
        triangle: tuple[AgentMesh, CA], tmp_path: Path) -> None:
    """The flood again; once a victim isolates n1, the link between the two victims is cut
    (the chaos ``silent_cut``): the isolating victim now reaches the other only through
    n1, so its isolation is lifted (``cut_off``) within a few samples, and neither victim
    isolates n1 again while the cut lasts (the executor refuses: n1 is the only way)."""
    mesh, _ca = triangle
    path = tmp_path / "forged.bin"
    forged = encode_unsigned("evil", "10.77.0.98", 1, (("n1", 1.0),), b"") \
        + signature_trailer(b"\0" * 64)
    path.write_bytes(len(forged).to_bytes(4, "big") + forged)
    nodes = netns_nodes(lambda n: mesh.nodes[int(n[1:])].ns, mesh.base / "journal2")
    topo = Topo(mesh.state)
    flood = Fault("rogue", ("n1",), "isolate2",
                  {"rate": 200, "seconds": 90, "mode": "file", "datagrams": str(path)})
    cut = Fault("silent_cut", ("n0", "n2"), "isolate2cut")
    flood_plan, cut_plan = faults.plan(flood, topo), faults.plan(cut, topo)
    began = time.time()

    def since(i: int, reason: str, after: float) -> list[dict[str, object]]:
        return [ev for ev in remediations(mesh, i) if ev["reason"] == reason
                and float(ev["wall"]) > after]  # type: ignore[arg-type]

    res = inject(nodes, flood, flood_plan, began + 120, "isolate-test")
    assert all(r.data.get("ok") for r in res), [r.data for r in res]
    try:
        while not (isolating := [i for i in (0, 2) if [
                e for e in since(i, "apply:isolate_origin", began)
                if e["detail"].get("result") == "done"]]):  # type: ignore[union-attr]
            assert time.time() - began < 40, {i: remediations(mesh, i) for i in (0, 2)}
            time.sleep(1)
        i = isolating[0]
        cut_at = time.time()
        res = inject(nodes, cut, cut_plan, cut_at + 90, "isolate-test")
        assert all(r.data.get("ok") for r in res), [r.data for r in res]
        try:
            while not (lifted := since(i, "undo:isolate_origin", cut_at)):
                assert time.time() - cut_at < 30, remediations(mesh, i)
                time.sleep(1)
            took = round(float(lifted[0]["wall"]) - cut_at, 1)  # type: ignore[arg-type]
            time.sleep(25)  # more decisions, a lease TTL and more: nobody isolates n1 again
            again = [e for k in (0, 2) for e in since(k, "apply:isolate_origin", cut_at)
                     if e["detail"].get("result") == "done"]  # type: ignore[union-attr]
            refused = [e["detail"].get("why") for k in (0, 2)  # type: ignore[union-attr]
                       for e in since(k, "apply:isolate_origin", cut_at)
                       if e["detail"].get("result") == "refused"]  # type: ignore[union-attr]
        finally:
            assert all(r.data["ok"] for r in remove(nodes, cut, cut_plan))
    finally:
        assert all(r.data["ok"] for r in remove(nodes, flood, flood_plan))
        assert leftovers(nodes, ["n0", "n1", "n2"]) == {}
    print(json.dumps({"bench": "mapek_isolate", "topology": "triangle", "interval_s": 5,
                      "figure": "lifted_after_cut_s", "unit": "s", "value": took,
                      "reason": lifted[0]["detail"].get("reason"),  # type: ignore[union-attr]
                      "isolated_again": len(again), "refused": refused[:3]}))
    assert lifted[0]["detail"]["reason"] == "cut_off"  # type: ignore[index]
    assert took <= 15 and again == []
