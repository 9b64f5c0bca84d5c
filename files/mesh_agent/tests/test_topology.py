"""Signed adverts and the LSDB: accept rules, reject reasons, graph two-way check."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from meshcore_testkit.pki import CA, TRUST_DOMAIN

from mesh_agent.identity import Identity
from mesh_agent.link.wire import WireError
from mesh_agent.topology import (
    REJECT_REASONS,
    LinkStateDB,
    decode_advert,
    encode_unsigned,
    signature_trailer,
)

NOW = 1_800_000_000.0


def make_db(ca: CA, name: str, addr: str = "10.77.0.1", clock: float = NOW) -> LinkStateDB:
    return LinkStateDB(ca.identity(name), addr, max_age_s=30.0, seq_start=lambda now: 100)


def advert(
    ident: Identity,
    links: dict[str, float],
    seq: int = 1000,
    ts: float = NOW,
    addr: str = "10.77.0.2",
    origin: str | None = None,
    sign: bool = True,
) -> bytes:
    body = encode_unsigned(
        origin or ident.node_name,
        addr,
        seq,
        int(ts * 1000),
        tuple(sorted(links.items())),
        ident.cert_der,
    )
    return body + signature_trailer(ident.sign(body) if sign else b"")


def snapshot(db: LinkStateDB) -> dict[str, bytes]:
    return {o: e.raw for o, e in db.entries().items()}


@pytest.fixture
def db(ca: CA) -> LinkStateDB:
    d = make_db(ca, "a")
    d.originate({"b": 1.0}, NOW)
    return d


def test_valid_advert_accepted_and_graph_two_way(ca: CA, db: LinkStateDB) -> None:
    b = ca.identity("b")
    r = db.receive(advert(b, {"a": 2.0, "c": 1.0}), NOW + 1)
    assert r.accepted and r.origin == "b" and r.topology_changed
    g = db.graph()
    # a<->b is two-way (cost = worse side); b->c is one-way (c has no advert) so absent.
    assert set(g.nodes) == {"a", "b"}
    assert g.edges["a", "b"]["cost"] == 2.0
    assert db.addresses() == {"a": "10.77.0.1", "b": "10.77.0.2"}
    # Same bytes again is a flooding duplicate: not a rejection.
    r2 = db.receive(advert(b, {"a": 2.0, "c": 1.0}, seq=1000), NOW + 1)
    assert not r2.accepted and r2.reason == "replayed"  # re-signed => different bytes
    raw = db.entries()["b"].raw
    assert db.receive(raw, NOW + 1).reason == "duplicate"
    assert db.duplicate_total == 1


def reject_cases(ca: CA, other_ca: CA) -> dict[str, bytes]:
    b = ca.identity("b")
    wrong_key = dataclasses.replace(b, key=ec.generate_private_key(ec.SECP256R1()))
    rogue = other_ca.identity("b")
    liar = ca.identity("mallory")
    good = advert(b, {"a": 1.0}, seq=1000)
    tampered = bytearray(good)
    tampered[30] ^= 0x01  # flips a byte of the link list: signature no longer matches
    return {
        "unsigned": advert(b, {"a": 1.0}, seq=2000, sign=False),
        "bad_signature": advert(wrong_key, {"a": 1.0}, seq=2000),
        "bad_signature_tampered": bytes(tampered),
        "untrusted": advert(rogue, {"a": 1.0}, seq=2000),
        "untrusted_san": advert(liar, {"a": 1.0}, seq=2000, origin="b"),
        "stale": advert(b, {"a": 1.0}, seq=2000, ts=NOW - 31),
        "stale_future": advert(b, {"a": 1.0}, seq=2000, ts=NOW + 120),
        "replayed": advert(b, {"a": 1.0}, seq=999),
        "replayed_same_seq": advert(b, {"a": 1.0}, seq=1000),
        "malformed": good[:-5],
    }


@pytest.mark.parametrize(
    "case",
    [
        "unsigned",
        "bad_signature",
        "bad_signature_tampered",
        "untrusted",
        "untrusted_san",
        "stale",
        "stale_future",
        "replayed",
        "replayed_same_seq",
        "malformed",
    ],
)
def test_rejections_counted_state_unchanged(
    ca: CA, other_ca: CA, db: LinkStateDB, case: str
) -> None:
    b = ca.identity("b")
    assert db.receive(advert(b, {"a": 1.0}, seq=1000), NOW).accepted
    before = snapshot(db)
    data = reject_cases(ca, other_ca)[case]
    r = db.receive(data, NOW)
    reason = case.split("_")[0] if case != "bad_signature_tampered" else "bad_signature"
    if case.startswith("bad_signature"):
        reason = "bad_signature"
    assert not r.accepted
    assert r.reason == reason
    assert db.rejected[reason] == 1
    assert sum(db.rejected.values()) == 1
    assert snapshot(db) == before
    assert set(db.rejected) == set(REJECT_REASONS)


def test_own_old_advert_bumps_seq(ca: CA) -> None:
    a = ca.identity("a")
    db = LinkStateDB(a, "10.77.0.1", 30.0, seq_start=lambda now: 5)
    old = advert(a, {}, seq=500, addr="10.77.0.1")
    assert db.receive(old, NOW).reason == "replayed"
    raw, _ = db.originate({}, NOW)
    assert decode_advert(raw).seq == 501


def test_expire_and_seq_monotonic(ca: CA, db: LinkStateDB) -> None:
    assert db.receive(advert(ca.identity("b"), {"a": 1.0}), NOW).accepted
    assert db.expire(NOW + 10) == []
    assert db.expire(NOW + 31) == ["b"]
    assert db.has_own() and len(db) == 1
    s1 = decode_advert(db.originate({}, NOW)[0]).seq
    s2 = decode_advert(db.originate({}, NOW)[0]).seq
    assert s2 == s1 + 1


def test_identity_load_from_files(ca: CA, tmp_path: object) -> None:
    from pathlib import Path

    from mesh_agent.config import IdentityConfig

    paths = ca.write(Path(str(tmp_path)), "n7")
    ident = Identity.load(
        IdentityConfig(Path(paths["cert"]), Path(paths["key"]), Path(paths["ca"])),
        "n7",
        TRUST_DOMAIN,
    )
    assert ident.verify_cert(ident.cert_der, "n7")


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_advert_decoder_only_raises_wireerror(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_advert(data)


@st.composite
def mutations(draw: st.DrawFn, base: bytes) -> bytes:
    raw = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw[: draw(st.integers(0, len(raw)))])


def test_random_and_mutated_adverts_never_raise_nor_change_state(ca: CA) -> None:
    db = make_db(ca, "a")
    db.originate({"b": 1.0}, NOW)
    good = advert(ca.identity("b"), {"a": 1.0}, seq=1000)
    assert db.receive(good, NOW).accepted
    base = advert(ca.identity("b"), {"a": 1.0, "c": 3.0}, seq=2000)

    @given(st.one_of(st.binary(max_size=300), mutations(base)))
    @settings(max_examples=400, deadline=None)
    def check(data: bytes) -> None:
        before = snapshot(db)
        r = db.receive(data, NOW)  # must not raise
        if data != base:  # a mutation may be a no-op; the only valid input is base itself
            assert not r.accepted
            assert snapshot(db) == before

    check()
