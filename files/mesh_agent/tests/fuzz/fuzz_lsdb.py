"""Coverage-guided fuzzing of ``LinkStateDB.receive`` with real certificate bytes (atheris).

    python fuzz_lsdb.py [libFuzzer options, e.g. -max_total_time=30] [CORPUS_DIR]

Each input is turned into one advert for a database that already holds a few
real ones. The input picks how: raw bytes; a real advert with bytes of it
replaced; or an advert whose *certificate* is a real node certificate with
some of its DER replaced, re-signed with that node's key so the database goes
all the way to certificate parsing (the probe's InvalidVersion lived there).
A crash is any exception out of ``receive``, an ``internal_error`` (an
exception the database had to catch), or an accepted advert that does not
verify. ``tests/test_fuzz_lsdb.py`` runs this for a bounded time in make test.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from mesh_agent.identity import Identity
    from mesh_agent.topology import LinkStateDB, decode_advert, encode_unsigned, with_age
    from mesh_agent.topology import signature_trailer as trailer

from meshcore_testkit.pki import CA

NOW = 1000.0
CA_ = CA.create("fuzz-ca")
NAMES = {"a": "10.77.0.1", "b": "10.77.0.2", "c": "10.77.0.3"}
IDS: dict[str, Identity] = {n: CA_.identity(n, addr) for n, addr in NAMES.items()}


def signed(who: Identity, seq: int, links: tuple[tuple[str, float], ...], cert: bytes,
           addr: str) -> bytes:
    body = encode_unsigned(who.node_name, addr, seq, links, cert)
    return body + trailer(who.sign(body))


SEEDS = [signed(IDS["b"], 10, (("a", 1.0), ("c", 2.0)), IDS["b"].cert_der, NAMES["b"]),
         signed(IDS["c"], 10, (("b", 1.0),), IDS["c"].cert_der, NAMES["c"])]


def fresh_db() -> LinkStateDB:
    db = LinkStateDB(IDS["a"], NAMES["a"], 60.0)
    db.originate({"b": 1.0}, NOW)
    for raw in SEEDS:
        db.receive(raw, NOW)
    return db


DB = fresh_db()


def one_input(data: bytes) -> None:
    global DB
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 2)
    if mode == 0:
        raw = fdp.ConsumeBytes(fdp.remaining_bytes())
    elif mode == 1:
        base = bytearray(SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)])
        for _ in range(fdp.ConsumeIntInRange(1, 8)):
            base[fdp.ConsumeIntInRange(0, len(base) - 1)] = fdp.ConsumeInt(1) & 0xFF
        raw = bytes(base[: fdp.ConsumeIntInRange(0, len(base))])
    else:
        who = IDS[("b", "c")[fdp.ConsumeIntInRange(0, 1)]]
        cert = bytearray(who.cert_der)
        for _ in range(fdp.ConsumeIntInRange(1, 6)):
            cert[fdp.ConsumeIntInRange(0, len(cert) - 1)] = fdp.ConsumeInt(1) & 0xFF
        cut = fdp.ConsumeIntInRange(0, len(cert))
        seq = fdp.ConsumeIntInRange(11, 2**63 - 1)
        raw = with_age(signed(who, seq, (("a", 1.0),), bytes(cert[:cut]), NAMES[who.node_name]),
                       fdp.ConsumeIntInRange(0, 90_000))
    result = DB.receive(raw, NOW, source=f"mesh0/10.98.0.{mode}",
                        ttl=255 if fdp.ConsumeBool() else None)
    if result.reason == "internal_error":
        raise AssertionError("receive caught an unexpected exception")
    if result.accepted and result.reason is None:
        advert = decode_advert(raw)
        peer = IDS["a"].verify_cert(advert.cert_der, advert.origin)
        assert IDS["a"].verify_signature(peer.public_key, advert.signature, advert.signed_part)
        DB = fresh_db()  # keep the seeds' seqs as the baseline


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
