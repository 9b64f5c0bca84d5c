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


def test_batman_adv_mesh_interface_in_the_real_kernel(host) -> None:
    """The arm64 kernel's batman-adv module (the lab's kernel has none) makes bat0
    from the batman_adv role's networkd files, and the agent polls it."""
    assert host.file("/sys/module/batman_adv").is_directory
    assert host.file("/sys/class/net/bat0").exists
    with host.sudo():
        algo = host.check_output("batctl routing_algo")  # lists each mesh interface's algorithm
        assert "bat0" in algo and "BATMAN_IV" in algo, algo
        assert "backend: batman" in host.file("/etc/mesh-agent/agent.yml").content_string
    # No radio in QEMU: wpa_supplicant waits for wlan0 instead of holding the boot.
    assert host.file(
        "/etc/systemd/system/sys-subsystem-net-devices-wlan0.device.wants/"
        "wpa_supplicant-nl80211@wlan0.service"
    ).is_symlink
    assert not host.service("wpa_supplicant-nl80211@wlan0").is_running
