"""Hello authentication, bounds and GTSM (issue 13, finding 3), sans-I/O.

The attacker is on the link: it can send any hello with any name and source
address, replay hellos it heard, and flood names. It has no node's key.
"""

from __future__ import annotations

import dataclasses

import pytest
from meshcore_testkit.pki import CA, PairKeysForTests

from mesh_agent.identity.hellokeys import HelloKeys
from mesh_agent.link import Hello, LinkSensor, NeighborDown, NeighborUp, encode_hello
from mesh_agent.link.sensor import MAX_CANDIDATES_PER_IF, MAX_NEIGHBORS_PER_IF
from mesh_agent.link.wire import MAX_ECHO, Echo, decode_hello

IV = 0.05
ATTACKER_SRC = "10.98.0.66"


def sensor(name: str, addr: str, session: int = 1) -> LinkSensor:
    s = LinkSensor(name, addr, IV, 3, keys=PairKeysForTests(name), session=session)
    s.add_interface("mesh0")
    return s


def up_pair(now: float = 0.0) -> tuple[LinkSensor, LinkSensor, float]:
    a, b = sensor("a", "10.77.0.1"), sensor("b", "10.77.0.2")
    for _ in range(3):
        b.receive("mesh0", a.build_hello("mesh0", now), "10.98.0.0", now)
        a.receive("mesh0", b.build_hello("mesh0", now), "10.98.0.1", now)
        now += IV
    assert [n.state for n in a.neighbors()] == ["up"] and [n.state for n in b.neighbors()] == ["up"]
    return a, b, now


def forged(
    name: str, seq: int, ts_us: int, echoes: tuple[Echo, ...] = (), tag_for: str = ""
) -> bytes:
    """A hello claiming *name*, with a made-up tag (the attacker has no pair key)."""
    h = Hello(seq, ts_us, 50, "10.77.0.66", name, echoes, session=99)
    return encode_hello(h, [(tag_for, b"x" * 32)] if tag_for else [])


def state(s: LinkSensor) -> list[tuple[str, str, str, str, int]]:
    return [(n.name, n.state, n.link_address, n.node_address, n.last_seq) for n in s.neighbors()]


def test_spoofed_hello_with_a_real_neighbours_name_changes_nothing() -> None:
    a, _b, now = up_pair()
    before = state(a)
    # No tag for a, a wrong tag, and a replay of b's real hello from another source.
    assert a.receive("mesh0", forged("b", 10**6, 10**12), ATTACKER_SRC, now) == []
    assert a.receive("mesh0", forged("b", 10**6, 10**12, tag_for="a"), ATTACKER_SRC, now) == []
    assert state(a) == before, "an unauthenticated hello rewrote the neighbour"
    assert a.drops["unauthenticated"] == 1 and a.drops["bad_auth"] == 1
    assert a.best_links()["b"].link_address == "10.98.0.1"  # next hop untouched


def test_tampered_authenticated_hello_is_refused() -> None:
    a, b, now = up_pair()
    raw = bytearray(b.build_hello("mesh0", now))
    raw[18:22] = bytes([10, 77, 0, 99])  # rewrite b's node address
    assert a.receive("mesh0", bytes(raw), "10.98.0.1", now) == []
    assert a.drops["bad_auth"] == 1 and a.best_links()["b"].node_address == "10.77.0.2"


def test_64_spoofed_names_keep_the_real_neighbour_listed() -> None:
    """The probe: 64 names that sort first pushed b out of a's 64-entry echo list."""
    a, b, now = up_pair()
    for i in range(64):
        a.receive("mesh0", forged(f"0000-{i:02d}", 1, 1), ATTACKER_SRC, now)
    echo = decode_hello(a.build_hello("mesh0", now))
    assert "b" in [e.name for e in echo.echoes]
    assert len(echo.echoes) <= MAX_ECHO
    # b keeps seeing itself in a's hellos: the link stays two-way on both sides.
    ev = b.receive("mesh0", a.build_hello("mesh0", now + IV), "10.98.0.0", now + IV)
    assert not [e for e in ev if isinstance(e, NeighborDown)]
    assert [n.name for n in a.up_neighbors()] == ["b"]
    assert [n.name for n in b.up_neighbors()] == ["a"]
    # Nothing the attacker sent became a neighbour; candidates are bounded.
    assert a.drops["unauthenticated"] == 64
    assert len(a._candidates) <= MAX_CANDIDATES_PER_IF


def test_10k_fake_names_cost_bounded_work() -> None:
    """The probe: 10k fake names made each hello tick take 62 ms (budget: 50 ms).

    Now nothing of them is kept, so a tick's work is that of the real table.
    """
    a, _b, now = up_pair()
    a.keys = PairKeysForTests("a", unknown={f"fake{i}" for i in range(10_000)})
    for i in range(10_000):  # from as many spoofed on-link sources
        a.receive("mesh0", forged(f"fake{i}", 1, 1), f"10.98.{i // 250}.{i % 250}", now)
    assert a.drops["unknown_identity"] == 10_000
    assert len(a.neighbors()) == 1 and len(a._candidates) == 0
    hello = decode_hello(a.build_hello("mesh0", now))
    assert [e.name for e in hello.echoes] == ["b"] and [n for n, _ in hello.auth] == ["b"]
    # Solicitations (our advert unicast to the sender) are rate-limited.
    assert len(a.take_solicits()) <= 10 and a.drops["solicit_limited"] > 9_000


def test_table_is_bounded_and_established_neighbours_are_never_evicted() -> None:
    a, _b, now = up_pair()
    peers = []
    for i in range(MAX_NEIGHBORS_PER_IF + 5):
        p = sensor(f"p{i:02d}", f"10.77.1.{i + 1}")
        # p hears a first, so its hello to a carries a tag for a.
        p.receive("mesh0", a.build_hello("mesh0", now), "10.98.0.0", now)
        a.receive("mesh0", p.build_hello("mesh0", now), f"10.98.1.{i}", now)
        peers.append(p)
    assert len(a.neighbors()) == MAX_NEIGHBORS_PER_IF
    assert "b" in [n.name for n in a.neighbors()]
    assert a.drops["table_full"] >= 5
    echo = decode_hello(a.build_hello("mesh0", now))
    assert "b" in [e.name for e in echo.echoes]


def test_replayed_old_session_cannot_kill_the_neighbour() -> None:
    """Authenticated hellos recorded from b's previous run, replayed after it restarted."""
    a, b, now = up_pair()
    recorded = [b.build_hello("mesh0", now + i * IV) for i in range(40)]  # session 1, high seqs
    for raw in recorded[:2]:
        a.receive("mesh0", raw, "10.98.0.1", now)
    now += 3 * IV
    b2 = sensor("b", "10.77.0.2", session=2)  # b restarts
    b2.receive("mesh0", a.build_hello("mesh0", now), "10.98.0.0", now)
    ev = a.receive("mesh0", b2.build_hello("mesh0", now + 0.01), "10.98.0.1", now + 0.01)
    assert [type(e) for e in ev] == [NeighborDown, NeighborUp]  # the real restart
    now += 0.02
    for raw in recorded[30:]:  # the replay: session 1, newer seqs than anything seen of it
        now += 0.001
        assert a.receive("mesh0", raw, ATTACKER_SRC, now) == []
    assert a.drops["stale_session"] == 10
    assert [(n.name, n.session, n.link_address) for n in a.neighbors()] == [
        ("b", 2, "10.98.0.1")
    ]


def test_gtsm_hello_from_afar_is_dropped() -> None:
    a, b, now = up_pair()
    raw = b.build_hello("mesh0", now)
    assert a.receive("mesh0", raw, "10.98.0.1", now, ttl=254) == []
    assert a.drops["ttl"] == 1
    a.receive("mesh0", raw, "10.98.0.1", now, ttl=255)
    assert a.drops["ttl"] == 1 and a.neighbors()[0].last_rx == now


def test_real_pair_keys_from_certificates(ca: CA) -> None:
    """HelloKeys: both ends derive the same key from the certified keys, nobody else can."""
    ids = {n: ca.identity(n, f"10.77.0.{i}") for i, n in enumerate("abm", 1)}
    certs = {n: i.cert_der for n, i in ids.items()}
    keys = {n: HelloKeys(i, certs.get) for n, i in ids.items()}
    k_ab = keys["a"].keys("b", 0.0)
    assert len(k_ab) == 1 and k_ab == keys["b"].keys("a", 0.0)
    assert keys["m"].keys("b", 0.0) != k_ab  # mallory's key with b is another key
    assert keys["a"].keys("unknown", 0.0) == []
    # A certificate that does not verify (another CA) gives no key at all.
    rogue = CA.create("rogue")
    certs["r"] = rogue.identity("r", "10.77.0.9").cert_der
    assert keys["a"].keys("r", 0.0) == []
    # Cached: no ECDH per hello.
    derived = keys["a"].derivations
    for _ in range(100):
        keys["a"].keys("b", 0.0)
    assert keys["a"].derivations == derived

    # Sensors with these keys form an adjacency; mallory cannot speak for b.
    a = LinkSensor("a", "10.77.0.1", IV, 3, keys=keys["a"], session=1)
    b = LinkSensor("b", "10.77.0.2", IV, 3, keys=keys["b"], session=1)
    m = LinkSensor("b", "10.77.0.3", IV, 3, keys=keys["m"], session=5)  # mallory says "b"
    for s in (a, b, m):
        s.add_interface("mesh0")
    now = 0.0
    for _ in range(3):
        b.receive("mesh0", a.build_hello("mesh0", now), "10.98.0.0", now)
        m.receive("mesh0", a.build_hello("mesh0", now), "10.98.0.0", now)
        a.receive("mesh0", b.build_hello("mesh0", now), "10.98.0.1", now)
        now += IV
    assert [n.name for n in a.up_neighbors()] == ["b"]
    a.receive("mesh0", m.build_hello("mesh0", now), ATTACKER_SRC, now)
    assert a.drops["bad_auth"] == 1 and a.best_links()["b"].link_address == "10.98.0.1"


def test_key_rotation_keeps_the_adjacency(ca: CA) -> None:
    ia, ib = ca.identity("a", "10.77.0.1"), ca.identity("b", "10.77.0.2")
    certs = {"a": ia.cert_der, "b": ib.cert_der}
    ka, kb = HelloKeys(ia, certs.get), HelloKeys(ib, certs.get)
    before = ka.keys("b", 0.0)
    # b rotates; a has not yet received b's new certificate (its advert).
    key, cert = ca.issue("b", addresses=["10.77.0.2"])
    ib.swap(key, cert, (ca.cert,))
    during = kb.keys("a", 1.0)
    assert before[0] in during and len(during) == 2  # old and new, for the grace period
    certs["b"] = ib.cert_der  # the new advert arrives
    after = ka.keys("b", 2.0)
    assert after[0] in kb.keys("a", 2.0)
    assert kb.keys("a", 1000.0) == after  # grace over: only the new key


@pytest.mark.parametrize("count", [0, 1, 64])
def test_auth_entries_roundtrip(count: int) -> None:
    h = Hello(1, 2, 50, "10.77.0.1", "a", (), session=3)
    raw = encode_hello(h, [(f"n{i}", bytes([i]) * 32) for i in range(count)])
    got = decode_hello(raw)
    assert [n for n, _ in got.auth] == [f"n{i}" for i in range(count)]
    assert dataclasses.replace(got, auth=(), digest=b"") == h

