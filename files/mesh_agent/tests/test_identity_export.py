"""The node's identity exported for the lease client (mesh_agent.identity.export), and
the lease client's TLS files (mapek.shell.lease_tls); against a real etcd with the
etcd role's TLS, a SPIRE node's lease taken with its Workload API SVID."""

from __future__ import annotations

import shutil
import stat
import time
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from meshcore_testkit.etcd import ClientTls, EtcdCluster
from meshcore_testkit.pki import CA

from mesh_agent.config import AgentConfig, parse_config
from mesh_agent.identity import Identity
from mesh_agent.identity.export import ClientExport, client_pem
from mesh_agent.mapek.lease import Refusal
from mesh_agent.mapek.safety import Lease
from mesh_agent.mapek.shell import lease_provider, lease_tls

TTL = 2


def config(state_dir: Path, **lease: Any) -> AgentConfig:
    return parse_config({"node_name": "a", "node_address": "10.77.0.1",
                         "state_dir": str(state_dir),
                         "identity": {"cert": "/nonexistent/node.crt",
                                      "key": "/nonexistent/node.key",
                                      "ca": "/nonexistent/ca.crt"},
                         "mapek": {"lease": lease}})


def read_back(path: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    data = path.read_bytes()
    key = serialization.load_pem_private_key(data, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, x509.load_pem_x509_certificate(data)


def test_the_svid_is_written_private_and_replaced_on_rotation(tmp_path: Path) -> None:
    ca = CA.create()
    first, second = ca.identity("a"), ca.identity("a")
    export = ClientExport(tmp_path, wanted=True)
    export.sync(first)
    path = client_pem(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    key, cert = read_back(path)
    assert cert == first.cert and key.private_numbers() == first.key.private_numbers()
    # A rotation: the key and the certificate change together, in one file.
    export.sync(second)
    key, cert = read_back(path)
    assert cert == second.cert and key.private_numbers() == second.key.private_numbers()
    assert [p.name for p in path.parent.iterdir()] == ["client.pem"]  # no temporary left
    assert export.errors == 0


def test_identity_from_files_clears_an_old_export(tmp_path: Path) -> None:
    ident = CA.create().identity("a")
    ClientExport(tmp_path, wanted=True).sync(ident)
    ClientExport(tmp_path, wanted=False).sync(ident)
    assert not client_pem(tmp_path).parent.exists()


def test_a_state_dir_that_cannot_be_written_is_counted_not_raised(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file, not a directory")
    export = ClientExport(tmp_path / "state", wanted=True)
    export.sync(CA.create().identity("a"))
    assert export.errors == 1


@pytest.mark.parametrize(("source", "endpoints", "wanted"), [
    ("workload_api", ["https://10.0.0.1:2379"], True),
    ("workload_api", ["http://10.0.0.1:2379"], False),  # plain http presents nothing
    ("workload_api", [], False),  # no lease service
    ("files", ["https://10.0.0.1:2379"], False),  # the files are on disk already
])
def test_exported_only_for_a_workload_api_identity_and_https(
        tmp_path: Path, source: str, endpoints: list[str], wanted: bool) -> None:
    assert ClientExport.for_config(config(tmp_path, endpoints=endpoints), source).wanted is wanted


def test_lease_tls_takes_the_export_when_there_is_one(tmp_path: Path) -> None:
    cfg = config(tmp_path, endpoints=["https://10.0.0.1:2379"])
    assert lease_tls(cfg) == ("/nonexistent/ca.crt", "/nonexistent/node.crt",
                              "/nonexistent/node.key")
    ClientExport.for_config(cfg, "workload_api").sync(CA.create().identity("a"))
    pem = str(client_pem(tmp_path))
    assert lease_tls(cfg) == ("/nonexistent/ca.crt", pem, pem)
    site = config(tmp_path, endpoints=["https://10.0.0.1:2379"], ca="/etc/mesh-agent/etcd-ca.crt")
    assert lease_tls(site) == ("/etc/mesh-agent/etcd-ca.crt", pem, pem)


def pem_of(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()) + \
        cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd (Debian package etcd-server)")
def test_a_spire_node_takes_a_lease_with_its_workload_api_svid(tmp_path: Path) -> None:
    """etcd as the etcd role runs it on a SPIRE site: a server certificate from the site
    CA, client certificates required from the site CA or the SPIRE bundle. The node has
    no identity files; it presents the SVID it exported, and checks the member against
    ``mapek.lease.ca``. An SVID from an authority etcd does not trust is refused with a
    reason, and the provider does not raise."""
    site, spire, stranger = CA.create("site-ca"), CA.create("spire-ca"), CA.create("stranger")
    pem = serialization.Encoding.PEM
    d = tmp_path / "pki"
    d.mkdir()
    key, cert = site.issue("etcd", addresses=["127.0.0.1"], dns_names=["localhost"])
    (d / "etcd.pem").write_bytes(pem_of(key, cert))
    (d / "site-ca.crt").write_bytes(site.cert.public_bytes(pem))
    (d / "client-ca.crt").write_bytes(site.cert.public_bytes(pem) + spire.cert.public_bytes(pem))
    (d / "check.pem").write_bytes(pem_of(*site.issue("check")))
    tls = ClientTls(cert=d / "etcd.pem", key=d / "etcd.pem", client_ca=d / "client-ca.crt",
                    ca=d / "site-ca.crt", check_cert=d / "check.pem")
    cluster = EtcdCluster(tmp_path / "etcd", n=1, tls=tls)
    cluster.start()
    try:
        state = tmp_path / "state"
        cfg = config(state, endpoints=cluster.endpoints, ca=str(d / "site-ca.crt"), ttl_s=TTL)
        export = ClientExport.for_config(cfg, "workload_api")
        g = nx.path_graph(["a", "b"])

        def acquire(ident: Identity) -> Lease | Refusal:
            export.sync(ident)
            return lease_provider(cfg, lambda: g).acquire("a", "restart_unit", TTL,
                                                          time.monotonic())

        got = acquire(spire.identity("a"))
        assert isinstance(got, Lease), got
        lease_provider(cfg, lambda: g).release(got)
        # After a rotation the new SVID is what is presented: one etcd does not trust
        # is refused (the TLS handshake fails: no quorum reachable, with why).
        refused = acquire(stranger.identity("a"))
        assert isinstance(refused, Refusal) and refused.reason == "no_quorum", refused
        assert "127.0.0.1" in refused.detail, refused.detail
        again = acquire(spire.identity("a"))
        assert isinstance(again, Lease), again
    finally:
        cluster.close()
