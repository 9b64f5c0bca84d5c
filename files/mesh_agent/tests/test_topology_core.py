"""The topology core's rules on their own: flooding, database exchange, origination,
back-link detection and topology-change counting (no sockets, no Agent, no sleeps)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshcore_testkit.pki import CA

from mesh_agent.topology import LinkStateDB
from mesh_agent.topology.core import Send, TopologyCore

NOW = 1000.0
ADDR = {"a": "10.77.0.1", "b": "10.77.0.2", "c": "10.77.0.3", "d": "10.77.0.4"}
HOPS = [("mesh0", "10.78.0.1"), ("mesh1", "10.78.0.3"), ("mesh2", "10.78.0.5")]


def core(ca: CA, name: str = "a", refresh_s: float = 10.0) -> TopologyCore:
    return TopologyCore(LinkStateDB(ca.identity(name, ADDR[name]), ADDR[name], 60.0), refresh_s)


def signed(ca: CA, name: str, links: dict[str, float], now: float = NOW) -> bytes:
    db = LinkStateDB(ca.identity(name, ADDR[name]), ADDR[name], 60.0)
    return db.originate(links, now)[0]


def test_an_accepted_advert_floods_to_every_neighbour_but_its_sender(ca: CA) -> None:
    t = core(ca)
    raw = signed(ca, "b", {"a": 1.0, "c": 1.0})
    got = t.received("mesh0", "10.78.0.1", raw, NOW, 255, HOPS)
    assert got.result.accepted and got.changed
    assert got.sends == (Send("mesh1", "10.78.0.3", raw), Send("mesh2", "10.78.0.5", raw))
    again = t.received("mesh1", "10.78.0.3", raw, NOW, 255, HOPS)  # the flooding echo
    assert again.result.reason == "duplicate" and again.sends == () and not again.changed


def test_a_rejected_advert_goes_nowhere_but_an_older_copy_gets_ours_back(ca: CA) -> None:
    t = core(ca)
    assert t.received("mesh0", "10.78.0.1", b"MA garbage", NOW, 255, HOPS).sends == ()
    b = LinkStateDB(ca.identity("b", ADDR["b"]), ADDR["b"], 60.0)
    old, _ = b.originate({"a": 1.0}, NOW)
    new, _ = b.originate({"a": 1.0, "c": 1.0}, NOW + 1)
    assert t.received("mesh0", "10.78.0.1", new, NOW + 1, 255, HOPS).result.accepted
    stale = t.received("mesh1", "10.78.0.3", old, NOW + 2, 255, HOPS)
    assert stale.result.reason == "replayed"
    assert [(s.ifname, s.dest) for s in stale.sends] == [("mesh1", "10.78.0.3")]  # only back
    assert b.node_name.encode() in stale.sends[0].data


def test_a_new_neighbour_gets_the_whole_database(ca: CA) -> None:
    t = core(ca)
    t.originate({"b": 1.0}, NOW)
    for name in ("b", "c"):
        t.received("mesh0", "10.78.0.1", signed(ca, name, {"a": 1.0}), NOW, 255, HOPS)
    sends = t.neighbor_up([("mesh2", "10.78.0.5")], NOW + 5)
    assert len(sends) == 3 and {(s.ifname, s.dest) for s in sends} == {("mesh2", "10.78.0.5")}
    assert t.neighbor_up([], NOW + 5) == []  # batman-adv: it hears every broadcast already


def test_our_own_broadcast_heard_back_is_quiet(ca: CA) -> None:
    """batman-adv: our advert goes to the limited broadcast and the kernel loops it back."""
    t = core(ca)
    raw, _ = t.originate({"b": 1.0}, NOW, [("bat0", "255.255.255.255")])
    got = t.received("bat0", ADDR["a"], raw[0].data, NOW, 255, [])
    assert got.result.reason == "self" and not got.rejected and got.sends == ()
    assert t.looped_back_total == 1 and t.lsdb.rejected.total() == 0
    other = t.received("bat0", ADDR["b"], b"MA garbage", NOW, 255, [])
    assert other.rejected and other.result.reason == "malformed"


def test_flooding_follows_the_backends_targets(ca: CA) -> None:
    """Accepted adverts go where the backend says: batman-adv relays nothing."""
    t = core(ca)
    raw = signed(ca, "b", {"a": 1.0})
    got = t.received("bat0", ADDR["b"], raw, NOW, 255, [])
    assert got.result.accepted and got.sends == ()


def test_origination_floods_to_the_hops_given_and_says_when_links_changed(ca: CA) -> None:
    t = core(ca, refresh_s=10.0)
    sends, changed = t.originate({"b": 1.0}, NOW)  # not flooded (the start)
    assert sends == [] and changed and t.originated_total == 1
    assert not t.refresh_due(NOW + 9.9) and t.refresh_due(NOW + 10.0)
    sends, changed = t.originate({"b": 1.0}, NOW + 10.0, HOPS)  # the refresh: same links
    assert not changed and [s.ifname for s in sends] == ["mesh0", "mesh1", "mesh2"]
    _, changed = t.originate({"b": 1.0, "c": 2.0}, NOW + 11.0, HOPS)
    assert changed


def test_solicits_get_our_advert(ca: CA) -> None:
    t = core(ca)
    assert t.solicited([("mesh0", "10.78.0.1")], NOW) == []  # nothing signed yet
    t.originate({}, NOW)
    [s] = t.solicited([("mesh0", "10.78.0.1")], NOW + 1)
    assert (s.ifname, s.dest) == ("mesh0", "10.78.0.1") and b"a" in s.data


def test_back_link_detection_reports_whether_a_changed_advert_lists_us(ca: CA) -> None:
    t = core(ca)
    b = LinkStateDB(ca.identity("b", ADDR["b"]), ADDR["b"], 60.0)
    first = t.received("mesh0", "10.78.0.1", b.originate({"a": 1.0, "d": 1.0}, NOW)[0], NOW,
                       255, HOPS)
    assert first.lists_us is True
    refresh = t.received("mesh0", "10.78.0.1", b.originate({"a": 1.0, "d": 1.0}, NOW + 1)[0],
                         NOW + 1, 255, HOPS)
    assert refresh.result.accepted and not refresh.changed and refresh.lists_us is None
    cut = t.received("mesh1", "10.78.0.3", b.originate({"d": 1.0}, NOW + 2)[0], NOW + 2, 255,
                     HOPS)
    assert cut.changed and cut.lists_us is False and cut.result.origin == "b"


def test_an_advert_that_drops_links_names_them(ca: CA) -> None:
    t = core(ca)
    b = LinkStateDB(ca.identity("b", ADDR["b"]), ADDR["b"], 60.0)
    first = t.received("mesh0", "10.78.0.1", b.originate({"a": 1.0, "c": 1.0, "d": 1.0}, NOW)[0],
                       NOW, 255, HOPS)
    assert first.changed and first.removed == ()  # a new origin removes nothing
    costlier = t.received("mesh0", "10.78.0.1", b.originate({"a": 1.0, "c": 5.0, "d": 1.0},
                                                            NOW + 1)[0], NOW + 1, 255, HOPS)
    assert costlier.changed and costlier.removed == ()
    cut = t.received("mesh0", "10.78.0.1", b.originate({"a": 1.0}, NOW + 2)[0], NOW + 2, 255,
                     HOPS)
    assert cut.removed == (("b", "c"), ("b", "d"))
    again = t.received("mesh0", "10.78.0.1", b.originate({"a": 1.0}, NOW + 3)[0], NOW + 3, 255,
                       HOPS)
    assert again.result.accepted and not again.changed and again.removed == ()


def test_topology_changes_are_counted_once_per_new_shape(ca: CA) -> None:
    t = core(ca)
    t.originate({"b": 1.0}, NOW)
    t.received("mesh0", "10.78.0.1", signed(ca, "b", {"a": 1.0}), NOW, 255, HOPS)
    g = t.graph()
    assert (t.changes_total, t.nodes, t.edges) == (1, 2, 1) and g.has_edge("a", "b")
    t.graph()
    assert t.changes_total == 1  # the same graph again
    t.originate({"b": 3.0}, NOW + 1)  # a cost change is a new shape
    t.graph()
    assert t.changes_total == 2


def test_each_topology_change_is_counted_per_edge_it_added_removed_or_recosted(ca: CA) -> None:
    t = core(ca)
    b = LinkStateDB(ca.identity("b", ADDR["b"]), ADDR["b"], 60.0)
    c = LinkStateDB(ca.identity("c", ADDR["c"]), ADDR["c"], 60.0)

    def hear(db: LinkStateDB, links: dict[str, float], at: float) -> None:
        assert t.received("mesh0", "10.78.0.1", db.originate(links, at)[0], at, 255,
                          HOPS).result.accepted

    t.originate({"b": 1.0}, NOW)
    hear(b, {"a": 1.0, "c": 1.0}, NOW)
    hear(c, {"b": 1.0}, NOW)
    t.graph()
    assert t.edge_changes == {}  # the first graph: no change to count yet
    t.originate({"b": 3.0}, NOW + 1)  # a re-costed edge: its old and new pair, one change
    t.graph()
    assert t.edge_changes == {"a~b": 1}
    hear(c, {}, NOW + 2)
    t.graph()  # b~c gone
    t.graph()  # the same graph: nothing more
    hear(c, {"b": 1.0}, NOW + 3)
    t.graph()  # b~c back
    assert t.edge_changes == {"a~b": 1, "b~c": 2} and t.changes_total == 4


def test_the_per_edge_counts_are_bounded(ca: CA, monkeypatch: pytest.MonkeyPatch) -> None:
    from mesh_agent.topology import core as core_mod

    monkeypatch.setattr(core_mod, "EDGE_CHANGES_MAX", 2)
    t = core(ca)
    t.originate({"b": 1.0, "c": 1.0}, NOW)
    for name in ("b", "c"):
        t.received("mesh0", "10.78.0.1", signed(ca, name, {"a": 1.0}), NOW, 255, HOPS)
    t.graph()
    t.edge_changes = {"x~y": 5, "y~z": 1}  # full, with edges no longer in the graph
    t.originate({"b": 2.0, "c": 1.0}, NOW + 1)
    t.graph()
    assert t.edge_changes == {"a~b": 1}  # the absent edges forgotten to make room
    monkeypatch.setattr(core_mod, "EDGE_CHANGES_MAX", 1)  # full of edges in the graph
    t.originate({"b": 1.0, "c": 2.0}, NOW + 2)  # both re-costed: the new a~c not counted
    t.graph()
    assert t.edge_changes == {"a~b": 2}


@settings(max_examples=300, suppress_health_check=list(HealthCheck), deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=200).map(lambda b: b"MA" + b),
    ),
    st.sampled_from(["mesh0", "mesh9", "eth0"]),
    st.sampled_from(["10.78.0.1", "0.0.0.0"]),
    st.sampled_from([255, 64, None]),
)
def test_random_datagrams_never_raise_send_or_change_state(
    ca: CA, data: bytes, ifname: str, src: str, ttl: int | None
) -> None:
    t = _FUZZ.setdefault("core", core(ca))
    if not t.lsdb.has_own():
        t.originate({}, NOW)
    before = {o: e.raw for o, e in t.lsdb.entries().items()}
    got = t.received(ifname, src, data, NOW, ttl, HOPS)
    assert not got.result.accepted and got.sends == () and not got.changed
    assert {o: e.raw for o, e in t.lsdb.entries().items()} == before


_FUZZ: dict[str, TopologyCore] = {}


def test_refusals_are_counted_per_sending_hop_and_bounded(ca: CA) -> None:
    """What a hop sent that was refused (not ordinary flooding's stale copies), by the hop
    it came from; past MAX_SOURCES hops the rest share one counter."""
    from mesh_agent.topology.core import OTHER_HOP
    from mesh_agent.topology.lsdb import MAX_SOURCES

    t = core(ca)
    for _ in range(3):
        t.received("mesh0", "10.78.0.1", b"MA garbage", NOW, 255, HOPS)
    t.received("mesh1", "10.78.0.3", b"MA garbage", NOW, 254, HOPS)  # wrong TTL
    assert t.received("mesh0", "10.78.0.1", signed(ca, "b", {"a": 1.0}), NOW, 255,
                      HOPS).result.accepted
    assert t.rejected_from == {("mesh0", "10.78.0.1"): 3, ("mesh1", "10.78.0.3"): 1}
    for i in range(MAX_SOURCES + 10):
        t.received("mesh2", f"10.79.{i // 256}.{i % 256}", b"MA garbage", NOW, 255, HOPS)
    assert len(t.rejected_from) == MAX_SOURCES + 1
    assert t.rejected_from[OTHER_HOP] == 12
    assert sum(t.rejected_from.values()) == sum(t.lsdb.rejected.values())


def test_an_isolated_hop_is_dropped_unread_until_its_end(ca: CA) -> None:
    t = core(ca)
    hop = ("mesh0", "10.78.0.1")
    t.isolate([hop], NOW + 10)
    raw = signed(ca, "b", {"a": 1.0})
    got = t.received(*hop, raw, NOW + 1, 255, HOPS)
    assert got.result.reason == "isolated" and not got.rejected and got.sends == ()
    assert t.isolated_total == 1 and t.lsdb.rx_total == 0 and "b" not in t.lsdb.entries()
    assert t.isolated_from == {hop: 1} and t.rejected_from == {}  # counted per hop, apart
    assert t.received("mesh1", "10.78.0.3", raw, NOW + 1, 255, HOPS).result.accepted
    c = signed(ca, "c", {"a": 1.0})
    assert t.received(*hop, c, NOW + 10, 255, HOPS).result.accepted  # its end: read again
    assert t.isolated == {}
    t.isolate([hop], NOW + 100)
    t.release([hop])
    assert t.isolated == {}
