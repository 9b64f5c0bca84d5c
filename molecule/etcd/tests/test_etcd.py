"""Real state after the etcd role: a three-member cluster over TLS from the lab CA."""

from __future__ import annotations

import json
import os
import time

import testinfra.utils.ansible_runner

RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])
MEMBERS = sorted(RUNNER.get_hosts("gateways"))
testinfra_hosts = [f"podman://{name}" for name in MEMBERS]
PKI = "/etc/etcd/pki"
TLS = f"--cacert={PKI}/ca.crt --cert={PKI}/etcd.crt --key={PKI}/etcd.key"


def endpoints(port: int = 2379) -> str:
    return ",".join(f"https://{m}:{port}" for m in MEMBERS)


def etcdctl(host, args: str, retries: int = 30):
    """etcdctl v3 with the member's own certificate (clientAuth), retried while the cluster settles."""
    for _ in range(retries):
        out = host.run(f"ETCDCTL_API=3 etcdctl --endpoints={endpoints()} {TLS} {args}")
        if out.rc == 0:
            return out
        time.sleep(1)
    raise AssertionError(f"etcdctl {args}: {out.stdout}{out.stderr}")


def test_packages_and_service(host):
    assert host.package("etcd-server").is_installed
    assert host.package("etcd-client").is_installed
    svc = host.service("etcd")
    assert svc.is_enabled and svc.is_running
    assert host.process.get(comm="etcd").user == "etcd"


def test_config_is_a_static_tls_cluster(host):
    conf = host.file("/etc/default/etcd").content_string
    name = host.check_output("hostname")
    assert f'ETCD_NAME="{name}"' in conf
    assert 'ETCD_DATA_DIR="/var/lib/etcd/meshcore"' in conf
    assert 'ETCD_CLIENT_CERT_AUTH="true"' in conf and 'ETCD_PEER_CLIENT_CERT_AUTH="true"' in conf
    assert 'ETCD_HEARTBEAT_INTERVAL="200"' in conf and 'ETCD_ELECTION_TIMEOUT="2000"' in conf
    cluster = next(ln for ln in conf.splitlines() if ln.startswith("ETCD_INITIAL_CLUSTER="))
    assert sorted(m.split("=")[0] for m in cluster.split('"')[1].split(",")) == MEMBERS


def test_key_is_private_to_etcd(host):
    key = host.file(f"{PKI}/etcd.key")
    assert (key.user, key.group, key.mode) == ("root", "etcd", 0o640)
    assert host.file("/var/lib/etcd/meshcore").mode == 0o700


def test_endpoint_health_on_every_member(host):
    out = etcdctl(host, "endpoint health -w json")
    health = json.loads(out.stdout)
    assert sorted(h["endpoint"] for h in health) == sorted(endpoints().split(","))
    assert all(h["health"] for h in health), health


def test_member_list_has_three_started_members(host):
    members = json.loads(etcdctl(host, "member list -w json").stdout)["members"]
    assert sorted(m["name"] for m in members) == MEMBERS
    assert all(m["clientURLs"][0].startswith("https://") for m in members)


def test_writes_replicate(host):
    me = host.check_output("hostname")
    etcdctl(host, f"put /meshcore/test/{me} ok")
    # Read with a linearizable get from every endpoint (Raft quorum read).
    for endpoint in endpoints().split(","):
        out = host.run(f"ETCDCTL_API=3 etcdctl --endpoints={endpoint} {TLS} get /meshcore/test/{me} --print-value-only")
        assert out.stdout.strip() == "ok", out.stderr


def test_client_without_certificate_is_refused(host):
    out = host.run(f"ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert={PKI}/ca.crt "
                   "--dial-timeout=3s --command-timeout=5s endpoint health")
    assert out.rc != 0


def test_client_trust_adds_the_extra_authority_for_clients_only(host):
    conf = host.file("/etc/default/etcd").content_string
    assert f'ETCD_TRUSTED_CA_FILE="{PKI}/client-ca.crt"' in conf
    assert f'ETCD_PEER_TRUSTED_CA_FILE="{PKI}/ca.crt"' in conf
    bundle = host.file(f"{PKI}/client-ca.crt").content_string
    assert bundle.count("BEGIN CERTIFICATE") == 2
    assert bundle.startswith(host.file(f"{PKI}/ca.crt").content_string.strip())


def health_as(host, name: str):
    return host.run(f"ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert={PKI}/ca.crt "
                    f"--cert=/root/{name}.crt --key=/root/{name}.key "
                    "--dial-timeout=3s --command-timeout=5s endpoint health")


def test_a_client_certificate_from_the_extra_authority_is_accepted(host):
    """What an agent on a SPIRE site presents: an SVID from the SPIRE bundle's authority."""
    for _ in range(30):
        out = health_as(host, "spire-client")
        if out.rc == 0:
            break
        time.sleep(1)
    assert out.rc == 0, out.stdout + out.stderr


def test_a_client_certificate_nobody_vouches_for_is_refused(host):
    out = health_as(host, "stranger")
    assert out.rc != 0
