"""Real state after the yggdrasil role: unit, TUN address, key custody, peering."""

from __future__ import annotations

import ipaddress
import json
import os
import time

import testinfra
import testinfra.utils.ansible_runner

HOSTS = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("all")
testinfra_hosts = [f"podman://{name}" for name in HOSTS]
YGGDRASIL_NET = ipaddress.ip_network("200::/7")
CONF = "/etc/yggdrasil/yggdrasil.conf"


def private_key(host) -> str:
    return host.check_output("cat /etc/yggdrasil/private.key").strip()


def tun_addresses(host) -> list[ipaddress.IPv6Address]:
    out = json.loads(host.check_output("ip -j -6 addr show dev tun0"))
    return [ipaddress.ip_address(a["local"]) for link in out for a in link["addr_info"]]


def test_service_enabled_running_unprivileged(host):
    svc = host.service("yggdrasil")
    assert svc.is_enabled
    assert svc.is_running
    assert host.process.get(comm="yggdrasil").user == "yggdrasil"


def test_key_and_config_are_root_only(host):
    for path in ("/etc/yggdrasil/private.key", CONF):
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("root", "root", 0o600), path
    assert len(private_key(host)) == 128  # ed25519 seed + public key, hex
    assert private_key(host) in host.check_output(f"cat {CONF}")
    # The role's template carries no key: meshcore-yggdrasil-config fills it in on the node.
    template = host.check_output(f"cat {CONF}.in")
    assert private_key(host) not in template and "@MESHCORE_PRIVATE_KEY@" in template


def test_private_key_never_logged(host):
    key = private_key(host)
    journal = host.check_output("journalctl --no-pager -o cat")
    assert "Your public key is" in journal  # the journal does hold yggdrasil's log
    assert key not in journal
    assert key[:64] not in journal  # not even the secret half


def test_tun_has_a_yggdrasil_address(host):
    addrs = [a for a in tun_addresses(host) if a in YGGDRASIL_NET]
    assert len(addrs) == 1
    expected = host.check_output(f"/usr/sbin/yggdrasil -useconffile {CONF} -address").strip()
    assert addrs[0] == ipaddress.ip_address(expected)


def test_unit_runs_with_the_credential_drop_in(host):
    drop_in = host.file("/etc/systemd/system/yggdrasil.service.d/meshcore.conf").content_string
    assert f"LoadCredential=yggdrasil.conf:{CONF}" in drop_in.splitlines()
    assert "/run/credentials/yggdrasil.service/yggdrasil.conf" in host.check_output(
        "cat /proc/$(pidof yggdrasil)/cmdline | tr '\\0' ' '"
    )


def test_peers_by_beacons_and_reaches_the_other_node(host):
    name = host.backend.name
    other = testinfra.get_host(f"podman://{next(h for h in HOSTS if h != name)}")
    target = next(a for a in tun_addresses(other) if a in YGGDRASIL_NET)
    for _ in range(30):  # beacons go out every few seconds after a (re)start
        ping = host.run(f"ping -6 -c 1 -W 2 {target}")
        if ping.rc == 0:
            break
        time.sleep(1)
    assert ping.rc == 0, ping.stdout + ping.stderr
    peers = host.check_output("yggdrasilctl -json -endpoint unix:///run/yggdrasil/yggdrasil.sock getPeers")
    assert json.loads(peers)["peers"], peers
