"""A node booted from the rpi-arm64 image with its seed, checked over ssh (QEMU TCG)."""

from __future__ import annotations

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
