"""Identity sources and rotation: swap, file watching, Workload API selection.

The Workload API tests drive the real ``spiffe.X509Source`` with a stand-in for
``spiffe.WorkloadApiClient`` (the gRPC boundary): the spiffe package ships no
Workload API test server, and no SPIRE agent runs on this machine.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from meshcore_testkit.pki import CA, TRUST_DOMAIN
from meshcore_testkit.workload_api import StandInClient
from spiffe import SpiffeId, TrustDomain, X509Bundle, X509BundleSet, X509Svid
from spiffe.workloadapi.x509_context import X509Context

from mesh_agent.config import IdentityConfig
from mesh_agent.identity import Identity, IdentityError, address_san, spiffe_id
from mesh_agent.identity.watch import (
    SETTLE_S,
    FileSource,
    IdentityWatcher,
    Material,
    WorkloadApiSource,
    select_source,
)
from mesh_agent.store.events import EventLog
from mesh_agent.topology.lsdb import LinkStateDB

PEM = serialization.Encoding.PEM


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def addr(name: str) -> str:
    """The node address the test certificates of n<k> name."""
    return f"10.77.0.{name[1:]}"


def replace(path: Path, data: bytes) -> None:
    """Write like Ansible's copy does: a temporary file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def rotate_files(ca: CA, paths: dict[str, str], name: str) -> x509.Certificate:
    key, cert = ca.issue(name, addresses=[addr(name)])
    replace(Path(paths["cert"]), cert.public_bytes(PEM))
    replace(Path(paths["key"]), key_pem(key))
    return cert


def identity_from(paths: dict[str, str], name: str) -> Identity:
    return Identity.load(IdentityConfig(**{k: Path(v) for k, v in paths.items()}), name,
                         TRUST_DOMAIN)


# -- Identity.swap ---------------------------------------------------------------
def test_swap_replaces_key_cert_and_bundle_together(ca: CA) -> None:
    ident = ca.identity("n1", addr("n1"))
    old_der = ident.cert_der
    key, cert = ca.issue("n1", addresses=[addr("n1")])
    ident.swap(key, cert, (ca.cert,))
    assert ident.cert_der != old_der
    assert ident.key is key
    assert ident.cert is cert


def test_swap_refuses_a_bad_set_and_keeps_the_old(ca: CA, other_ca: CA) -> None:
    ident = ca.identity("n1", addr("n1"))
    before = (ident.key, ident.cert_der, ident.bundle)
    key, cert = ca.issue("n1", addresses=[addr("n1")])
    other_key, _ = ca.issue("n1", addresses=[addr("n1")])
    with pytest.raises(IdentityError, match="does not match"):
        ident.swap(other_key, cert, (ca.cert,))
    _, wrong_name = ca.issue("n2", addresses=[addr("n2")], key=key)
    with pytest.raises(IdentityError, match="SAN names"):
        ident.swap(key, wrong_name, (ca.cert,))
    with pytest.raises(IdentityError, match="not issued"):
        ident.swap(key, cert, (other_ca.cert,))
    with pytest.raises(IdentityError, match="empty"):
        ident.swap(key, cert, ())
    assert (ident.key, ident.cert_der, ident.bundle) == before


def test_bundle_with_two_authorities_trusts_both(ca: CA, other_ca: CA) -> None:
    """SPIRE publishes its next CA before switching: peers of either must verify."""
    key, cert = ca.issue("n1", addresses=[addr("n1")])
    ident = Identity("n1", TRUST_DOMAIN, key, cert, ca.cert, (ca.cert, other_ca.cert))
    _, from_new_ca = other_ca.issue("n2", addresses=[addr("n2")])
    ident.verify_cert(from_new_ca.public_bytes(serialization.Encoding.DER), "n2")
    only_old = ca.identity("n3", addr("n3"))
    with pytest.raises(IdentityError, match="not issued"):
        only_old.verify_cert(from_new_ca.public_bytes(serialization.Encoding.DER), "n2")


def test_swap_to_a_new_bundle_forgets_peers_trusted_under_the_old(
    ca: CA, other_ca: CA
) -> None:
    ident = ca.identity("n1", addr("n1"))
    _, peer = ca.issue("n2", addresses=[addr("n2")])
    peer_der = peer.public_bytes(serialization.Encoding.DER)
    ident.verify_cert(peer_der, "n2")  # cached as trusted
    key, cert = other_ca.issue("n1", addresses=[addr("n1")])
    ident.swap(key, cert, (other_ca.cert,))
    with pytest.raises(IdentityError, match="not issued"):
        ident.verify_cert(peer_der, "n2")


# -- files: a running watcher picks up a rotation -------------------------------
def test_running_watcher_picks_up_rotated_files_and_adverts_verify(
    ca: CA, tmp_path: Path
) -> None:
    paths = ca.write(tmp_path / "n1", "n1", "10.77.0.1")
    ident = identity_from(paths, "n1")
    peer = ca.identity("n2", addr("n2"))
    sender = LinkStateDB(ident, "10.77.0.1", 30.0)
    receiver = LinkStateDB(peer, "10.77.0.2", 30.0)
    log = EventLog.in_state_dir(tmp_path / "state", boot_id="b")
    watcher = IdentityWatcher(FileSource(IdentityConfig(**{k: Path(v) for k, v in
                                                           paths.items()})), ident,
                              poll_s=0.02, events=log)
    first_expiry = ident.cert.not_valid_after_utc

    async def scenario() -> x509.Certificate:
        task = asyncio.create_task(watcher.run())
        raw, _ = sender.originate({"n2": 1.0}, 1000.0)
        assert receiver.receive(raw, 1000.0).accepted
        await asyncio.sleep(0.1)
        assert watcher.rotations == 0  # nothing changed, nothing swapped
        new_cert = rotate_files(ca, paths, "n1")
        for _ in range(200):
            if watcher.rotations:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        return new_cert

    new_cert = asyncio.run(scenario())
    assert watcher.rotations == 1
    assert ident.cert == new_cert
    raw, _ = sender.originate({"n2": 1.0}, 1001.0)
    assert new_cert.public_bytes(serialization.Encoding.DER) in raw
    result = receiver.receive(raw, 1001.0)
    assert result.accepted, result
    assert receiver.rejected.total() == 0
    assert (watcher.rotations, watcher.errors, watcher.source.name) == (1, 0, "files")
    assert ident.cert.not_valid_after_utc >= first_expiry
    [event] = log.query(kinds=["identity_rotated"])
    assert event.reason == "files" and event.detail["serial"] == f"{new_cert.serial_number:x}"


def test_half_written_rotation_waits_for_the_key(ca: CA, tmp_path: Path) -> None:
    """The certificate lands before its key: keep signing with the old pair, no error."""
    paths = ca.write(tmp_path / "n1", "n1", "10.77.0.1")
    ident = identity_from(paths, "n1")
    old_der = ident.cert_der
    now = [0.0]
    watcher = IdentityWatcher(FileSource(IdentityConfig(**{k: Path(v) for k, v in
                                                           paths.items()})), ident,
                              clock=lambda: now[0])
    key, cert = ca.issue("n1", addresses=[addr("n1")])
    replace(Path(paths["cert"]), cert.public_bytes(PEM))
    assert not watcher.check()
    assert ident.cert_der == old_der
    now[0] += 1.0
    replace(Path(paths["key"]), key_pem(key))
    assert watcher.check()
    assert ident.cert == cert
    assert watcher.errors == 0


def test_a_bad_rotation_is_counted_once_it_persists(ca: CA, tmp_path: Path) -> None:
    paths = ca.write(tmp_path / "n1", "n1", "10.77.0.1")
    ident = identity_from(paths, "n1")
    old_der = ident.cert_der
    now = [0.0]
    log = EventLog.in_state_dir(tmp_path / "state", boot_id="b")
    watcher = IdentityWatcher(FileSource(IdentityConfig(**{k: Path(v) for k, v in
                                                           paths.items()})), ident,
                              clock=lambda: now[0], events=log)
    replace(Path(paths["cert"]), b"-----BEGIN CERTIFICATE-----\ngarbage\n")
    assert not watcher.check()
    assert watcher.errors == 0
    now[0] += SETTLE_S
    assert not watcher.check()
    assert not watcher.check()
    assert watcher.errors == 1
    assert [e.kind for e in log.query()] == ["identity_rejected"]
    assert ident.cert_der == old_der


# -- source selection -----------------------------------------------------------
def test_selection_prefers_files_without_a_socket(ca: CA, tmp_path: Path) -> None:
    cfg = IdentityConfig(**{k: Path(v) for k, v in ca.write(tmp_path, "n1", "10.77.0.1").items()})
    assert isinstance(select_source(cfg, "n1", TRUST_DOMAIN, environ={}), FileSource)
    missing = {"SPIFFE_ENDPOINT_SOCKET": f"unix://{tmp_path}/nope.sock"}
    assert isinstance(select_source(cfg, "n1", TRUST_DOMAIN, environ=missing), FileSource)


# -- Workload API -----------------------------------------------------------------
def context(ca: CA, *names: str) -> tuple[X509Context, list[ec.EllipticCurvePrivateKey]]:
    svids, keys = [], []
    for name in names:
        # As SPIRE issues them: the address as its in-addr.arpa DNS SAN (no IP SANs).
        dns = [address_san(addr(name))] if name[1:].isdigit() else []
        key, cert = ca.issue(name, dns_names=dns)
        svids.append(X509Svid(SpiffeId(spiffe_id(TRUST_DOMAIN, name)), [cert], key))
        keys.append(key)
    bundle = X509Bundle(TrustDomain(TRUST_DOMAIN), {ca.cert})
    return X509Context(svids, X509BundleSet.of([bundle])), keys


def test_selection_uses_the_workload_api_when_the_socket_exists(
    ca: CA, tmp_path: Path
) -> None:
    sock = tmp_path / "api.sock"
    sock.touch()
    ctx, _ = context(ca, "n1")
    source = select_source(IdentityConfig(), "n1", TRUST_DOMAIN,
                           environ={"SPIFFE_ENDPOINT_SOCKET": f"unix://{sock}"},
                           client=StandInClient(ctx))
    try:
        assert isinstance(source, WorkloadApiSource)
        assert source.load().cert == ctx.default_svid.leaf
    finally:
        if isinstance(source, WorkloadApiSource):
            source.close()


def test_workload_api_picks_this_nodes_svid_and_the_bundle(ca: CA) -> None:
    ctx, keys = context(ca, "other-workload", "n1")
    source = WorkloadApiSource("unused", "n1", TRUST_DOMAIN, client=StandInClient(ctx))
    try:
        material = source.load()
    finally:
        source.close()
    assert isinstance(material, Material)
    assert material.key is keys[1]
    assert material.cert == ctx.x509_svids[1].leaf
    assert material.bundle == (ca.cert,)


def test_workload_api_push_rotates_the_running_identity(ca: CA) -> None:
    ctx, _ = context(ca, "n1")
    client = StandInClient(ctx)
    source = WorkloadApiSource("unused", "n1", TRUST_DOMAIN, client=client)
    m = source.load()
    ident = Identity("n1", TRUST_DOMAIN, m.key, m.cert, m.bundle[0], m.bundle)
    watcher = IdentityWatcher(source, ident)
    rotated, _ = context(ca, "n1")

    async def scenario() -> None:
        task = asyncio.create_task(watcher.run())
        await asyncio.sleep(0.05)
        await asyncio.to_thread(client.push, rotated)
        for _ in range(200):
            if watcher.rotations:
                break
            await asyncio.sleep(0.01)
        task.cancel()

    try:
        asyncio.run(scenario())
    finally:
        source.close()
    assert watcher.rotations == 1
    assert ident.cert == rotated.default_svid.leaf
    assert watcher.source.name == "workload_api"
    peer = ca.identity("n2", addr("n2"))
    raw, _ = LinkStateDB(ident, "10.77.0.1", 30.0).originate({}, 5.0)
    assert LinkStateDB(peer, "10.77.0.2", 30.0).receive(raw, 5.0).accepted


# -- asking the Workload API again (MAPE-K rerequest_identity) ----------------------
def watched(ca: CA, client: StandInClient) -> tuple[WorkloadApiSource, IdentityWatcher]:
    source = WorkloadApiSource("unused", "n1", TRUST_DOMAIN, timeout_s=5, client=client)
    m = source.load()
    ident = Identity("n1", TRUST_DOMAIN, m.key, m.cert, m.bundle[0], m.bundle)
    return source, IdentityWatcher(source, ident, events=EventLog.disabled())


def test_rerequest_gets_what_a_stopped_stream_missed_and_keeps_following(ca: CA) -> None:
    first, _ = context(ca, "n1")
    client = StandInClient(first)
    source, watcher = watched(ca, client)
    missed, _ = context(ca, "n1")
    later, _ = context(ca, "n1")

    async def scenario() -> tuple[str, str, dict[str, Any]]:
        task = asyncio.create_task(watcher.run())
        await asyncio.sleep(0.05)
        client.stall(missed)  # rotated, but the open stream never says so
        await asyncio.sleep(0.1)
        assert watcher.rotations == 0
        answer = await watcher.rerequest()
        await asyncio.to_thread(client.push, later)  # the new stream carries what comes next
        for _ in range(200):
            if watcher.rotations == 2:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        return answer

    try:
        result, why, detail = asyncio.run(scenario())
    finally:
        source.close()
    assert result == "done" and client.streams == 2
    assert detail["serial"] == f"{missed.default_svid.leaf.serial_number:x}" in why
    assert watcher.rotations == 2 and watcher.identity.cert == later.default_svid.leaf


def test_rerequest_reopens_a_source_an_unretryable_error_closed(ca: CA) -> None:
    first, _ = context(ca, "n1")
    client = StandInClient(first)
    source, watcher = watched(ca, client)
    client.fail(RuntimeError("stream reset"))
    with pytest.raises(Exception, match="stream reset"):
        source.load()
    assert not watcher.check() and watcher.identity.cert == first.default_svid.leaf
    fresh, _ = context(ca, "n1")
    client.stall(fresh)
    try:
        result, _, _ = asyncio.run(watcher.rerequest())
        assert result == "done" and watcher.identity.cert == fresh.default_svid.leaf
        assert source.load().cert == fresh.default_svid.leaf  # the new stream is the one read
    finally:
        source.close()


def test_rerequest_says_when_nothing_new_came_or_asking_failed(ca: CA) -> None:
    first, _ = context(ca, "n1")
    client = StandInClient(first)
    source, watcher = watched(ca, client)
    try:
        result, why, detail = asyncio.run(watcher.rerequest())
        assert result == "noop" and "the certificate we have" in why
        assert detail["serial"] == f"{first.default_svid.leaf.serial_number:x}"
        client.refuse = RuntimeError("no SPIRE agent")
        result, why, _ = asyncio.run(watcher.rerequest())
        assert result == "failed" and "no SPIRE agent" in why
        # the old stream is kept: still readable, the identity unchanged
        assert source.load().cert == first.default_svid.leaf
        assert watcher.identity.cert == first.default_svid.leaf and watcher.rotations == 0
        client.refuse = None
        # an SVID our bundle does not vouch for (issued by another CA)
        alien, _ = context(CA.create("another CA"), "n1")
        client.stall(X509Context(alien.x509_svids, first.x509_bundle_set))
        result, why, _ = asyncio.run(watcher.rerequest())
        assert result == "failed" and "old identity kept" in why
        assert watcher.identity.cert == first.default_svid.leaf
    finally:
        source.close()


def test_files_cannot_be_asked_again(ca: CA, tmp_path: Path) -> None:
    paths = ca.write(tmp_path, "n1", addr("n1"))
    watcher = IdentityWatcher(FileSource(IdentityConfig(**{k: Path(v) for k, v in paths.items()})),
                              identity_from(paths, "n1"))
    assert not watcher.can_rerequest
    result, why, _ = asyncio.run(watcher.rerequest())
    assert result == "refused" and "files" in why and "site.yml" in why
