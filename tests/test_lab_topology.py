"""The lab topology generators, loader and address plan."""

from __future__ import annotations

import ipaddress
import itertools
import math
from pathlib import Path

import networkx as nx
import pytest
import yaml
from meshcore_tools.lab import topology as topo


@pytest.mark.parametrize("n", [1, 2, 10, 17, 50])
def test_grid_is_connected_with_expected_size(n: int) -> None:
    t = topo.grid(n)
    g = t.graph()
    assert g.number_of_nodes() == n
    assert nx.is_connected(g)
    assert max(dict(g.degree()).values(), default=0) <= 4


def test_ladder_every_link_has_a_detour() -> None:
    g = topo.ladder(8).graph()
    assert g.number_of_edges() == 10
    assert list(nx.bridges(g)) == []


def test_ladder_rejects_odd() -> None:
    with pytest.raises(topo.TopologyError, match="even"):
        topo.ladder(7)


@pytest.mark.parametrize("n", [20, 50, 200])
def test_rgg_is_seeded_and_connected(n: int) -> None:
    a, b = topo.random_geometric(n, seed=7), topo.random_geometric(n, seed=7)
    assert a.links == b.links
    assert a.links != topo.random_geometric(n, seed=8).links
    assert nx.is_connected(a.graph())
    assert all(1 <= link["cost"] <= 10 for link in a.links)


def test_community_mesh_is_tree_like() -> None:
    """Like the published Ninux/Freifunk/AWMN snapshots: many bridges, few protected pairs."""
    g = topo.build("community", 0).graph()
    bridges = list(nx.bridges(g))
    assert len(bridges) / g.number_of_edges() >= 1 / 3
    pairs = list(itertools.combinations(g, 2))
    protected = sum(nx.edge_connectivity(g, u, v) >= 2 for u, v in pairs) / len(pairs)
    assert 0.05 <= protected <= 0.28


@pytest.mark.parametrize(("n", "seed"), [(30, 1), (72, 1), (72, 2), (120, 5)])
def test_ringtree_is_seeded_two_edge_connected_and_long(n: int, seed: int) -> None:
    """Rings hung on rings: no bridge (every link has a detour), sparse, a long diameter."""
    a, b = topo.ring_tree(n, seed), topo.ring_tree(n, seed)
    assert a.links == b.links
    assert a.links != topo.ring_tree(n, seed + 1).links
    assert topo.build("ringtree", n, seed).links == a.links
    g = a.graph()
    assert g.number_of_nodes() == n
    assert nx.is_connected(g) and not list(nx.bridges(g))
    assert g.number_of_edges() <= 1.6 * n  # tree-like: far sparser than rgg's degree 6
    assert nx.diameter(g) >= 2 * math.log2(n) - 4  # long rings, not a small world
    topo.validate(a)


def test_ringtree_needs_a_ring() -> None:
    with pytest.raises(topo.TopologyError, match="at least 6"):
        topo.ring_tree(5)


def test_normalise_assigns_unique_addresses_and_ifnames() -> None:
    state = topo.normalise(topo.random_geometric(50, seed=1))
    addrs = [n["node_address"] for n in state["nodes"].values()]
    mgmt = [n["mgmt_address"] for n in state["nodes"].values()]
    assert len(set(addrs)) == len(addrs) == 50
    assert len(set(mgmt)) == 50
    assert all(ipaddress.ip_address(a) in topo.NODE_NET for a in addrs)
    link_addrs = []
    for node in state["nodes"].values():
        names = [e["ifname"] for e in node["links"]]
        assert len(set(names)) == len(names)
        for e in node["links"]:
            link_addrs.append(e["address"])
            # the peer's record points back at us over the same /31
            peer = state["nodes"][e["peer"]]
            back = [p for p in peer["links"] if p["peer"] == node["name"]]
            assert len(back) == 1
            assert back[0]["peer_address"] == e["address"].split("/")[0]
            net = ipaddress.ip_interface(e["address"]).network
            assert ipaddress.ip_address(e["peer_address"]) in net
    assert len(set(link_addrs)) == len(link_addrs)


def test_normalise_is_deterministic() -> None:
    assert topo.normalise(topo.grid(12)) == topo.normalise(topo.grid(12))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"nodes": []}, "no nodes"),
        ({"nodes": ["a", "a"]}, "duplicate node"),
        ({"nodes": ["a", "b"], "links": [["a", "c"]]}, "unknown node 'c'"),
        ({"nodes": ["a", "b"], "links": [["a", "a"]]}, "loop"),
        ({"nodes": ["a", "b"], "links": [["a", "b"], ["b", "a"]]}, "duplicate link"),
        ({"nodes": ["a", "b"], "links": [{"a": "a", "b": "b", "cost": -1}]}, "cost"),
        ({"nodes": ["a", "b"], "links": [{"a": "a", "b": "b", "loss": 100}]}, "loss"),
        ({"nodes": ["a", "b", "c"], "links": [["a", "b"]]}, "not connected"),
        ({"nodes": ["bad name"]}, "bad node name"),
    ],
)
def test_bad_topologies_are_rejected_with_a_clear_message(
    tmp_path: Path, doc: dict[str, object], message: str
) -> None:
    path = tmp_path / "t.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(topo.TopologyError, match=message):
        topo.normalise(topo.build(str(path), 0))


def test_unknown_topology_names_the_choices() -> None:
    with pytest.raises(topo.TopologyError, match="grid, rgg, ladder, ringtree, community"):
        topo.build("nonsense", 10)
