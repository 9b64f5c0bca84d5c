"""isolate_origin against a real flood: the chaos ``rogue`` fault, real agents, real etcd.

Three enforce-mode agents in a triangle, n0 - n1 - n2 - n0, each running the MAPE-K loop
(enforce, the fixed rule table) with leases from an etcd of three members, one in each
node's namespace on its node address (reached over the agents' own routes). The chaos
fault ``rogue`` on n1 (a compromised node) floods n0 and n2 with forged adverts through
the normal fault path. Expected, on at least one victim: an ``advert_storm`` incident on
``link:n1`` (the hop the flood came from, whatever origin the adverts claim), decided
``isolate_origin`` under a lease, a remediation event ``done`` whose decision is signed
with the victim's key, and n1's adverts then dropped unread
(``meshcore_adverts_isolated_total`` rising while the flood goes on), with every route
as before (n1's own advert still reaches the victim through the other one, so no
database goes stale). The fleet cap (one disruptive lease at once in a 3-node fleet, one
per 2-hop neighbourhood) lets the victims act one at a time: the second is refused, asks
again one lease TTL (15 s) later, and acts then. The isolation's expiry (600 s) is tested
in-process (``files/mesh_agent/tests/test_mapek_agent.py``).

About 75 s, in ``make test``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
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

pytestmark = [requires_root,
              pytest.mark.skipif(shutil.which("etcd") is None,
                                 reason="needs etcd (Debian package etcd-server)")]
FLOOD_S = 75
TTL_S = 15


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
    done: dict[int, dict[str, object]] = {}
    after: dict[int, float] = {}
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < FLOOD_S - 5 and len(done) < 2:
            for i in (0, 2):
                for ev in remediations(mesh, i):
                    detail = ev["detail"]
                    assert isinstance(detail, dict)
                    if (i not in done and detail.get("kind") == "isolate_origin"
                            and detail.get("result") == "done"):
                        done[i] = ev
                        after[i] = round(float(ev["wall"]) - began, 1)  # type: ignore[arg-type]
            time.sleep(1)
        assert len(done) == 2, {i: remediations(mesh, i) for i in (0, 2)}
        i, ev = min(done.items(), key=lambda x: after[x[0]])
        took = after[i]
        # the second waited for the first's lease, no longer than a TTL and a retry (the
        # tight figure is printed, and compared with its target in docs/results.md)
        assert after[2 - i] - took <= 2 * TTL_S + 10, after
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
        # n1's adverts are dropped unread while the flood goes on
        before = isolated_total(mesh, i)
        time.sleep(3)
        assert isolated_total(mesh, i) > before
        incidents = json.loads(api(mesh.nodes[i].ns, "/v1/incidents")[1])["incidents"]
        storm = [x for x in incidents if x["class"] == "advert_storm"]
        assert storm and storm[0]["target"] == "link:n1"
        assert storm[0]["action"] == {"kind": "isolate_origin", "outcome": "applied"}
        other = json.loads(api(mesh.nodes[2 - i].ns, "/v1/incidents")[1])["incidents"]
        print(json.dumps({"first": mesh.nodes[i].name, "isolated_after_s": after,
                          "isolated_adverts": isolated_total(mesh, i),
                          "lease_tokens": [done[k]["detail"]["lease_token"]  # type: ignore[index]
                                           for k in sorted(done)],
                          "second_incidents": [(x["class"], x["target"], x["action"])
                                               for x in other]}))
        common = {"bench": "mapek_isolate", "topology": "triangle", "rate_per_s": 200,
                  "interval_s": 5, "ttl_s": TTL_S}
        for figure, value in (("first_isolated_s", took),
                              ("second_isolated_after_first_s", round(after[2 - i] - took, 1))):
            print(json.dumps({**common, "figure": figure, "unit": "s", "value": value}))
    finally:
        assert all(r.data["ok"] for r in remove(nodes, fault, plan))
        assert leftovers(nodes, ["n0", "n1", "n2"]) == {}
    # every route as before: nothing went stale (n1's advert reaches us through the other)
    changed = sum(mesh.routes(k) != routes[k] for k in range(3))
    print(json.dumps({"bench": "mapek_isolate", "topology": "triangle", "figure":
                      "nodes_with_routes_changed", "unit": "nodes", "value": changed}))
    assert changed == 0
