"""A node booted from the rpi-arm64 image with its seed, checked over ssh (QEMU TCG)."""

from __future__ import annotations

import ipaddress
import json
import os

import testinfra.utils.ansible_runner

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
testinfra_hosts = [
    f"ansible://{name}?ansible_inventory={INVENTORY}"
    for name in testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_hosts("all")
]


def api(host, path: str) -> tuple[int, dict]:
    """GET on the agent's API from the node itself (no curl in the image)."""
    code = (
        "import urllib.request\n"
        f"r=urllib.request.urlopen('http://127.0.0.1:9105{path}',timeout=10)\n"
        "print(r.status); print(r.read().decode())\n"
    )
    out = host.check_output("python3 -c %s", code).splitlines()
    return int(out[0]), json.loads("\n".join(out[1:]))


def test_hostname_from_the_seed(host) -> None:
    name = host.backend.get_hostname()
    assert host.check_output("hostname") == name
    assert host.file("/etc/hostname").content_string.strip() == name


def test_no_unit_failed(host) -> None:
    assert host.run("systemctl is-system-running").stdout.strip() == "running"
    assert host.check_output("systemctl list-units --state=failed --no-legend --plain") == ""


def test_agent_unit_is_active_and_healthy(host) -> None:
    svc = host.service("mesh-agent")
    assert svc.is_running and svc.is_enabled
    status, body = api(host, "/healthz")
    assert status == 200 and body["status"] == "ok"
    assert body["node"] == host.backend.get_hostname()


def test_identity_came_from_the_seed_not_the_image(host) -> None:
    with host.sudo():
        cfg = host.file("/etc/mesh-agent/agent.yml")
        assert cfg.exists and cfg.mode == 0o640
        assert f'node_name: "{host.backend.get_hostname()}"' in cfg.content_string
        key = host.file("/etc/mesh-agent/pki/node.key")
        assert key.exists and key.mode == 0o640 and key.user == "root"


def test_node_exporter_reports_unit_states(host) -> None:
    assert (
        host.socket("tcp://0.0.0.0:9100").is_listening or host.socket("tcp://:::9100").is_listening
    )
    out = host.check_output(
        "python3 -c %s",
        "import urllib.request;print(urllib.request.urlopen("
        "'http://127.0.0.1:9100/metrics',timeout=20).read().decode())",
    )
    assert 'node_systemd_unit_state{name="mesh-agent.service",state="active"' in out


def test_yggdrasil_key_was_made_on_this_node_at_first_boot(host) -> None:
    """The image carries the key-less template; the card made its key at boot."""
    with host.sudo():
        key = host.file("/etc/yggdrasil/private.key")
        assert (key.user, key.mode) == ("root", 0o600)
        assert len(key.content_string.strip()) == 128
        assert "@MESHCORE_PRIVATE_KEY@" in host.file("/etc/yggdrasil/yggdrasil.conf.in").content_string
        addr = host.check_output(
            "/usr/sbin/yggdrasil -useconffile /etc/yggdrasil/yggdrasil.conf -address"
        )
    show = host.run("systemctl show -p Result -p ExecMainStatus meshcore-yggdrasil-config.service")
    assert "Result=success" in show.stdout and "ExecMainStatus=0" in show.stdout
    assert host.service("yggdrasil").is_running
    tun = json.loads(host.check_output("ip -j -6 addr show dev tun0"))
    assert ipaddress.ip_address(addr) in [
        ipaddress.ip_address(a["local"]) for link in tun for a in link["addr_info"]
    ]


def test_native_mesh_links_from_the_site_config_and_the_seed(host) -> None:
    """The starter site meshes natively over wlan0: the image's link file names
    it, the seed's drop-in puts this node's mesh address on it, and the radio
    waits for its device (QEMU has none) instead of holding the boot."""
    net = host.file("/etc/systemd/network/40-meshcore-link.network").content_string
    assert "Name=wlan0" in net
    drop_in = host.file(
        "/etc/systemd/network/40-meshcore-link.network.d/50-meshcore-address.conf"
    ).content_string
    assert "Address=10.77.0.1/16" in drop_in
    with host.sudo():
        agent = host.file("/etc/mesh-agent/agent.yml").content_string
        assert "backend: native" in agent and '"wlan0"' in agent and "mode: enforce" in agent
        assert "ssid=\"meshcore-starter\"" in host.file(
            "/etc/wpa_supplicant/wpa_supplicant-nl80211-wlan0.conf"
        ).content_string
    assert host.file(
        "/etc/systemd/system/sys-subsystem-net-devices-wlan0.device.wants/"
        "wpa_supplicant-nl80211@wlan0.service"
    ).is_symlink
    assert not host.service("wpa_supplicant-nl80211@wlan0").is_running


def test_time_server_from_the_site_config(host) -> None:
    """starter-01 is the starter site's time server: chrony serves the mesh prefix."""
    assert host.service("chrony").is_running
    server = host.file("/etc/chrony/conf.d/meshcore-server.conf").content_string
    assert "allow 10.77.0.0/16" in server and "local stratum 10" in server
    assert host.file("/usr/lib/clock-epoch").exists
