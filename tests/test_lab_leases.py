"""The MAPE-K loop's leases on the running lab: etcd on the three gateways, taken over
the mesh by every node with ``meshctl lease check`` (the agent's own lease provider,
its config, TLS files and LSDB), the 2-hop rule and the fleet cap between real nodes,
a kept lease that blocks its neighbourhood no longer than its TTL, and no quorum.

Each figure is printed as one JSON line (``pytest -s``). Slow (the lab): runs under
`make test-full`.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

import networkx as nx
import pytest
from meshcore_testkit.containerlab import exec_in
from meshcore_tools.lab.plan import pick_gateways, state_graph
from meshcore_tools.lab.state import load_state

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (podman, netns)"),
]
TTL_S = 30  # the role's default mesh_agent_mapek_lease_ttl_s, which the lab keeps
PKI = "/etc/etcd/pki"


def figure(name: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"bench": "lab_leases", "figure": name, "value": value, "unit": unit,
                      **extra}, sort_keys=True))


def lease_check(node: str, *argv: str) -> tuple[int, dict[str, Any]]:
    res = exec_in(node, "meshctl", "--json", "lease", "check", *argv)
    assert res.stdout.strip(), (node, res.returncode, res.stderr)
    return res.returncode, json.loads(res.stdout)


def mesh() -> tuple[dict[str, Any], nx.Graph, list[str]]:
    state = load_state()
    return state, state_graph(state), pick_gateways(state)


def etcdctl(gateway: str, members: list[str], state: dict[str, Any], *argv: str) -> Any:
    """etcdctl on *gateway* with its member certificate, against *members* (JSON out)."""
    urls = ",".join(f"https://{state['nodes'][g]['node_address']}:2379" for g in members)
    res = exec_in(gateway, "env", "ETCDCTL_API=3", "etcdctl", f"--endpoints={urls}",
                  f"--cacert={PKI}/ca.crt", f"--cert={PKI}/etcd.crt", f"--key={PKI}/etcd.key",
                  *argv, "-w", "json", timeout=60)
    return json.loads(res.stdout or "null")


def etcd_health(gateway: str, gateways: list[str], state: dict[str, Any]) -> list[dict[str, Any]]:
    health: list[dict[str, Any]] = etcdctl(gateway, gateways, state, "endpoint", "health") or []
    return health


def test_the_gateways_run_one_healthy_etcd_cluster(lab: dict[str, object]) -> None:
    state, _, gateways = mesh()
    assert len(gateways) == 3
    deadline = time.monotonic() + 120  # the members find each other over the mesh
    while True:
        health = etcd_health(gateways[0], gateways, state)
        if len(health) == 3 and all(h.get("health") for h in health):
            break
        assert time.monotonic() < deadline, health
        time.sleep(3)
    members = etcdctl(gateways[0], gateways[:1], state, "member", "list")["members"]
    assert sorted(m["name"] for m in members) == gateways


def test_every_node_takes_a_lease_over_the_mesh(lab: dict[str, object]) -> None:
    """One after another, each node is granted a lease with a larger fencing token, still
    holds it when it asks etcd again, and hands it back."""
    state, g, gateways = mesh()
    want = [f"https://{state['nodes'][n]['node_address']}:2379" for n in gateways]
    tokens, took = [], []
    for node in sorted(g):
        code, r = lease_check(node)
        assert code == 0, r
        assert r["granted"] and r["still_held"] and r["released"], r
        assert r["endpoints"] == want and r["fleet"] == g.number_of_nodes(), r
        assert set(r["neighbourhood"]) == set(nx.single_source_shortest_path_length(g, node, 2))
        tokens.append(r["token"])
        took.append(r["acquire_ms"])
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), tokens
    figure("acquire_ms_median", statistics.median(took), "ms", nodes=len(took))
    figure("acquire_ms_max", max(took), "ms", nodes=len(took))


def test_a_kept_lease_blocks_its_neighbourhood_no_longer_than_its_ttl(
        lab: dict[str, object]) -> None:
    """A holder that never hands its lease back (as a dead one): a node 2 hops away is
    refused naming it, a node farther away is refused by the fleet cap (1 of 10 nodes at
    5 %), and the neighbour waiting for it is granted within the TTL, with a larger token."""
    _, g, _ = mesh()
    holder = sorted(g)[0]
    hops = nx.single_source_shortest_path_length(g, holder)
    near = min((n for n, d in hops.items() if d == 2), default=None)
    far = min((n for n, d in hops.items() if d >= 3), default=None)
    assert near and far, hops
    code, kept = lease_check(holder, "--keep")
    assert code == 0 and not kept["released"], kept
    t_kept = time.monotonic()
    code, r = lease_check(near)
    assert code == 1 and r["refusal"] == {"reason": "neighbourhood", "detail": holder}, r
    code, r = lease_check(far)
    assert code == 1 and r["refusal"]["reason"] == "fleet_cap", r
    assert r["cap"] == 1 and r["refusal"]["detail"] == "1 of 1 slots held", r
    code, r = lease_check(near, "--wait", str(TTL_S + 30))
    blocked = time.monotonic() - t_kept
    assert code == 0 and r["token"] > kept["token"], r
    # etcd expires a lease on its leader's clock, at most about one TTL after the grant.
    assert blocked <= TTL_S + 5, blocked
    figure("kept_lease_blocked_s", round(blocked, 1), "s", ttl_s=TTL_S)


def test_without_quorum_a_node_is_refused_then_granted_once_it_is_back(
        lab: dict[str, object]) -> None:
    state, g, gateways = mesh()
    node = next(n for n in sorted(g) if n not in gateways)
    stopped = gateways[1:]
    try:
        for gw in stopped:
            assert exec_in(gw, "systemctl", "stop", "etcd").returncode == 0
        t0 = time.monotonic()
        code, r = lease_check(node)
        refused_s = time.monotonic() - t0
        assert code == 1 and r["refusal"]["reason"] == "no_quorum", r
        figure("no_quorum_refusal_ms", r["acquire_ms"], "ms")
        figure("no_quorum_check_wall_s", round(refused_s, 2), "s")
    finally:
        for gw in stopped:
            exec_in(gw, "systemctl", "start", "etcd")
    t0 = time.monotonic()
    code, r = lease_check(node, "--wait", "120")
    assert code == 0, r
    figure("granted_after_quorum_back_s", round(time.monotonic() - t0, 1), "s")
    health = etcd_health(gateways[0], gateways, state)
    assert len(health) == 3 and all(h.get("health") for h in health), health
