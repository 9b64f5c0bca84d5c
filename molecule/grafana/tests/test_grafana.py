"""Real state after the grafana role with grafana_install=false: the provisioning files.

Grafana itself is not installable here (not in Debian; no internet in the
container): the README says the package install runs on a real fleet only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import testinfra.utils.ansible_runner
import yaml

testinfra_hosts = [
    f"podman://{name}"
    for name in testinfra.utils.ansible_runner.AnsibleRunner(
        os.environ["MOLECULE_INVENTORY_FILE"]
    ).get_hosts("all")
]
ROOT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
DASHBOARD = ROOT / "roles" / "grafana" / "files" / "dashboards" / "mesh-core.json"
UID = "meshcore-prometheus"


def test_datasource_provisioned(host):
    f = host.file("/etc/grafana/provisioning/datasources/meshcore.yml")
    assert f.user == "root" and f.mode == 0o644
    assert f.content_string.startswith("#")  # ansible_managed header
    doc = yaml.safe_load(f.content_string)
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert ds == {
        "name": "Prometheus", "uid": UID, "type": "prometheus", "access": "proxy",
        "url": "http://monitor01.example:9090", "isDefault": True, "editable": False,
    }


def test_dashboard_provider_points_at_the_dashboards(host):
    doc = yaml.safe_load(host.file("/etc/grafana/provisioning/dashboards/meshcore.yml").content_string)
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert host.file("/var/lib/grafana/dashboards").is_directory


def test_dashboard_installed_valid_and_uses_the_datasource(host):
    f = host.file("/var/lib/grafana/dashboards/mesh-core.json")
    assert f.mode == 0o644
    host.run_expect([0], "python3 -m json.tool /var/lib/grafana/dashboards/mesh-core.json")
    board = json.loads(f.content_string)
    assert board == json.loads(DASHBOARD.read_text())
    assert len(board["panels"]) >= 10
    uids = {t["datasource"]["uid"] for p in board["panels"] for t in p["targets"]}
    assert uids == {UID}


def test_package_not_installed_when_disabled(host):
    assert not host.package("grafana").is_installed
    assert not host.file("/etc/apt/sources.list.d/grafana.list").exists
