"""Yggdrasil in the running lab: two nodes several hops apart reach each other.

Slow: ``make test-full`` runs it after test_lab_e2e, on the same 10-node lab
(the session ``lab`` fixture in tests/conftest.py builds it once per pytest
session). It reads build/lab/state.yml and execs into the lab containers,
read-only apart from the pings.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import time

import networkx as nx
import pytest
from meshcore_testkit.containerlab import exec_in, running_lab_state

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("podman") is None,
                       reason="the lab needs root and podman"),
]


@pytest.fixture(scope="module")
def lab_state(lab: dict) -> dict:
    """The plan of the session lab; the session fixture has just built it, so it must run."""
    return running_lab_state()


def far_pair(state: dict) -> tuple[str, str, int]:
    g = nx.Graph()
    g.add_nodes_from(state["nodes"])
    g.add_edges_from((link["a"], link["b"]) for link in state["links"])
    hops = dict(nx.all_pairs_shortest_path_length(g))
    a, b = max(((x, y) for x in g for y in g if x < y), key=lambda p: hops[p[0]][p[1]])
    return a, b, hops[a][b]


def ygg_address(node: str) -> ipaddress.IPv6Address:
    out = exec_in(node, "ip", "-j", "-6", "addr", "show", "dev", "tun0")
    assert out.returncode == 0, f"{node}: no tun0 ({out.stderr.strip()})"
    for link in json.loads(out.stdout):
        for a in link["addr_info"]:
            addr = ipaddress.ip_address(a["local"])
            if addr in ipaddress.ip_network("200::/7"):
                return addr
    raise AssertionError(f"{node}: no 200::/7 address on tun0")


def test_every_node_runs_yggdrasil_with_its_own_address(lab_state: dict) -> None:
    addrs = {}
    for node in lab_state["nodes"]:
        assert exec_in(node, "systemctl", "is-active", "yggdrasil").stdout.strip() == "active", node
        addrs[node] = ygg_address(node)
    assert len(set(addrs.values())) == len(addrs)


def test_nodes_several_hops_apart_reach_each_other_over_yggdrasil(lab_state: dict) -> None:
    a, b, hops = far_pair(lab_state)
    assert hops >= 3, f"the lab topology is too small for a multi-hop test ({a}-{b}: {hops})"
    target = ygg_address(b)
    deadline = time.monotonic() + 60
    while True:
        ping = exec_in(a, "ping", "-6", "-c", "3", "-W", "2", str(target))
        if ping.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert ping.returncode == 0, f"{a} -> {b} ({hops} hops, {target}): {ping.stdout}"
    back = exec_in(b, "ping", "-6", "-c", "3", "-W", "2", str(ygg_address(a)))
    assert back.returncode == 0, back.stdout
