"""The node's release verifier (mesh_agent.release.verify): accept, and each refusal.

Keys are THROWAWAY keys generated per test run; none is committed."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_agent.release.verify import (
    Accept,
    InstalledState,
    Reason,
    Refuse,
    ReleaseFormatError,
    Signature,
    TrustPolicy,
    key_id,
    parse_signatures,
    parse_version,
    verify,
)

BUNDLE = "agent/bundles/x86_64/mesh-agent-abc.tgz"
DIGEST = "ab" * 32


def raw(k: Ed25519PrivateKey) -> bytes:
    return k.public_key().public_bytes(serialization.Encoding.Raw,
                                       serialization.PublicFormat.Raw)


def policy(keys: list[Ed25519PrivateKey], k: int) -> TrustPolicy:
    doc = {"threshold": k, "keys": [{"name": f"maint{i}", "public_key":
                                     base64.b64encode(raw(key)).decode()}
                                    for i, key in enumerate(keys)]}
    return TrustPolicy.from_json(json.dumps(doc))


def manifest(version: str = "1.2.0", serial: int = 100, wire: int = 2,
             files: dict[str, str] | None = None, **extra: Any) -> bytes:
    doc = {"schema": 1, "name": "mesh-core", "version": version, "serial": serial,
           "wire_version": wire, "files": files if files is not None else {BUNDLE: DIGEST},
           **extra}
    return json.dumps(doc, sort_keys=True).encode()


def signed(data: bytes, *keys: Ed25519PrivateKey) -> list[Signature]:
    return [Signature(key_id(raw(k)), k.sign(data)) for k in keys]


@pytest.fixture(scope="module")
def maints() -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.generate() for _ in range(3)]  # THROWAWAY test keys


@pytest.fixture(scope="module")
def trust(maints: list[Ed25519PrivateKey]) -> TrustPolicy:
    return policy(maints, 2)  # 2 of 3, as in Gluon


def run(data: bytes, sigs: list[Signature], trust: TrustPolicy,
        state: InstalledState | None = None, files: dict[str, str] | None = None,
        wire: int | None = 2, **flags: bool) -> Accept | Refuse:
    return verify(data, sigs, trust, state or InstalledState(),
                  {BUNDLE: DIGEST} if files is None else files, running_wire_version=wire,
                  **flags)


def test_two_of_three_accept_and_the_state_records_version_and_serial(maints, trust) -> None:
    data = manifest()
    v = run(data, signed(data, maints[0], maints[2]), trust)
    assert isinstance(v, Accept)
    assert v.signed_by == ("maint0", "maint2")
    assert v.state.highest_version == (1, 2, 0) and v.state.serials == {"1.2.0": 100}
    assert InstalledState.from_json(v.state.to_json()) == v.state


def test_too_few_valid_signatures(maints, trust) -> None:
    data = manifest()
    v = run(data, signed(data, maints[0]), trust)
    assert isinstance(v, Refuse) and v.reason is Reason.TOO_FEW_SIGNATURES
    assert "1 valid signature(s) of trusted keys, 2 needed" in v.message


def test_one_key_signing_twice_counts_once(maints, trust) -> None:
    data = manifest()
    v = run(data, signed(data, maints[1], maints[1]), trust)
    assert isinstance(v, Refuse) and v.reason is Reason.TOO_FEW_SIGNATURES


def test_a_signature_over_other_bytes_is_invalid(maints, trust) -> None:
    data = manifest()
    sigs = signed(data, maints[0]) + signed(manifest(serial=101), maints[1])
    v = run(data, sigs, trust)
    assert isinstance(v, Refuse) and v.reason is Reason.TOO_FEW_SIGNATURES
    assert "(1 invalid)" in v.message


def test_unknown_key(maints, trust) -> None:
    data = manifest()
    strangers = [Ed25519PrivateKey.generate() for _ in range(2)]  # THROWAWAY
    v = run(data, signed(data, maints[0], *strangers), trust)
    assert isinstance(v, Refuse) and v.reason is Reason.UNKNOWN_KEY
    assert key_id(raw(strangers[0])) in v.message


def test_unknown_keys_beside_k_valid_ones_are_ignored_for_rotation(maints, trust) -> None:
    data = manifest()
    newcomer = Ed25519PrivateKey.generate()  # THROWAWAY
    v = run(data, signed(data, maints[0], maints[1], newcomer), trust)
    assert isinstance(v, Accept) and v.ignored_keys == (key_id(raw(newcomer)),)


def test_downgrade_needs_the_flag(maints, trust) -> None:
    data = manifest(version="1.1.9", serial=50)
    state = InstalledState((1, 2, 0), {"1.2.0": 100})
    v = run(data, signed(data, *maints[:2]), trust, state)
    assert isinstance(v, Refuse) and v.reason is Reason.DOWNGRADE
    assert "1.1.9 is older than 1.2.0" in v.message
    ok = run(data, signed(data, *maints[:2]), trust, state, allow_downgrade=True)
    assert isinstance(ok, Accept)
    assert ok.state.highest_version == (1, 2, 0), "a rollback never lowers the high mark"


def test_replayed_older_manifest_is_refused_even_with_the_downgrade_flag(maints, trust) -> None:
    state = InstalledState((1, 2, 0), {"1.2.0": 100})
    old = manifest(serial=90)
    for flags in ({}, {"allow_downgrade": True}):
        v = run(old, signed(old, *maints[:2]), trust, state, **flags)
        assert isinstance(v, Refuse) and v.reason is Reason.REPLAY, flags
    same = manifest(serial=100)
    assert isinstance(run(same, signed(same, *maints[:2]), trust, state), Accept)


def test_wire_version_change_needs_the_flag(maints, trust) -> None:
    data = manifest(version="2.0.0", wire=3)
    v = run(data, signed(data, *maints[:2]), trust, wire=2)
    assert isinstance(v, Refuse) and v.reason is Reason.WIRE_VERSION
    assert "form no adjacency" in v.message
    assert isinstance(run(data, signed(data, *maints[:2]), trust, wire=2,
                          allow_wire_change=True), Accept)
    assert isinstance(run(data, signed(data, *maints[:2]), trust, wire=None), Accept)


def test_file_hash_mismatch_and_a_file_outside_the_manifest(maints, trust) -> None:
    data = manifest()
    sigs = signed(data, *maints[:2])
    v = run(data, sigs, trust, files={BUNDLE: "cd" * 32})
    assert isinstance(v, Refuse) and v.reason is Reason.FILE_HASH and BUNDLE in v.message
    v = run(data, sigs, trust, files={BUNDLE: DIGEST, "agent/extra.so": DIGEST})
    assert isinstance(v, Refuse) and v.reason is Reason.FILE_HASH
    assert "not in the manifest" in v.message


def test_a_signed_but_malformed_manifest(maints, trust) -> None:
    data = b'{"schema": 1, "version": "one"}'
    v = run(data, signed(data, *maints[:2]), trust)
    assert isinstance(v, Refuse) and v.reason is Reason.MALFORMED


@settings(max_examples=60, deadline=None)
@given(pos=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_of_the_manifest_is_refused(maints, trust, pos: int, bit: int) -> None:
    data = manifest()
    sigs = signed(data, *maints)
    i = pos % len(data)
    bad = data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1:]
    v = run(bad, sigs, trust)
    assert isinstance(v, Refuse) and v.reason is Reason.TOO_FEW_SIGNATURES


versions = st.tuples(*[st.integers(0, 20)] * 3)


@settings(max_examples=200, deadline=None)
@given(installed=versions, offered=versions, seen=st.integers(0, 5), serial=st.integers(0, 5),
       allow=st.booleans())
def test_version_and_serial_rules(maints, trust, installed, offered, seen, serial,
                                  allow) -> None:
    text = ".".join(map(str, offered))
    state = InstalledState(installed, {text: seen})
    data = manifest(version=text, serial=serial)
    v = run(data, signed(data, *maints[:2]), trust, state, allow_downgrade=allow)
    if serial < seen:
        assert isinstance(v, Refuse) and v.reason is Reason.REPLAY
    elif offered < installed and not allow:
        assert isinstance(v, Refuse) and v.reason is Reason.DOWNGRADE
    else:
        assert isinstance(v, Accept)
        assert v.state.highest_version == max(installed, offered)
        assert v.state.serials[text] == max(seen, serial)


@pytest.mark.parametrize("doc", [
    {"threshold": 3, "keys": []},
    {"threshold": 0, "keys": []},
    {"keys": []},
    {"threshold": 1, "keys": [{"name": "x", "public_key": "not base64!"}]},
    {"threshold": 1, "keys": [{"name": "x", "public_key": base64.b64encode(b"short").decode()}]},
])
def test_bad_trusted_keys_files_are_refused(doc) -> None:
    with pytest.raises(ReleaseFormatError):
        TrustPolicy.from_json(json.dumps(doc))


def test_signatures_file_and_versions() -> None:
    sigs = parse_signatures("# maintainers\n\nabcd " + base64.b64encode(b"x" * 64).decode())
    assert sigs == [Signature("abcd", b"x" * 64)]
    assert Signature("abcd", b"x" * 64).line().startswith("abcd ")
    with pytest.raises(ReleaseFormatError):
        parse_signatures("onlyonefield")
    assert parse_version("1.10.0") > parse_version("1.9.3")
    for bad in ("1.2", "v1.2.3", "1.2.3-rc1", ""):
        with pytest.raises(ReleaseFormatError):
            parse_version(bad)
