"""The prometheus role's config template with and without Alertmanagers, rendered by Ansible's
template module and checked by promtool (Debian's prometheus ships it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ROLE = ROOT / "roles" / "prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
pytestmark = pytest.mark.skipif(
    not Path(PROMTOOL).exists(),
    reason="promtool missing: `make setup` installs Debian's prometheus")


def render(tmp_path: Path, inventory: dict | None = None, **extra: object) -> dict:
    dest = tmp_path / "prometheus.yml"
    inv = []
    if inventory is not None:
        (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
        inv = ["-i", str(tmp_path / "hosts.yml")]
    (tmp_path / "vars.json").write_text(json.dumps({
        **yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()),
        **yaml.safe_load((ROLE / "vars" / "main.yml").read_text()), **extra}))
    res = subprocess.run(
        [str(Path(sys.executable).with_name("ansible")), "localhost", *inv, "-c", "local",
         "-m", "ansible.builtin.template",
         "-a", f"src={ROLE / 'templates' / 'prometheus.yml.j2'} dest={dest}",
         "-e", f"@{tmp_path / 'vars.json'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")})
    assert res.returncode == 0, res.stdout + res.stderr
    # promtool check config also opens the rule files: point them at the role's own.
    text = dest.read_text().replace("/etc/prometheus/rules.d/*.yml",
                                    str(ROLE / "files" / "rules" / "*.yml"))
    dest.write_text(text)
    check = subprocess.run([PROMTOOL, "check", "config", str(dest)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    doc: dict = yaml.safe_load(text)
    return doc


def test_no_alertmanager_no_alerting_block(tmp_path: Path) -> None:
    assert "alerting" not in render(tmp_path)


def test_alerts_go_to_the_listed_alertmanagers(tmp_path: Path) -> None:
    doc = render(tmp_path, prometheus_alertmanagers=["127.0.0.1:9093", "[fd00::2]:9093"])
    assert doc["alerting"] == {"alertmanagers": [
        {"static_configs": [{"targets": ["127.0.0.1:9093", "[fd00::2]:9093"]}]}]}


def test_a_host_is_scraped_where_the_agent_listens(tmp_path: Path) -> None:
    """mesh_mgmt_address first; without one, the mesh address on a site with a monitoring
    host (prometheus_scrape_mesh_address, where the site config makes the agent listen),
    else ansible_host."""
    inventory = {"all": {"children": {"mesh_nodes": {"hosts": {
        "n1": {"mesh_mgmt_address": "10.0.0.1", "mesh_node_address": "10.77.0.1"},
        "n2": {"ansible_host": "192.168.1.2", "mesh_node_address": "10.77.0.2"},
        "n3": {"ansible_host": "192.168.1.3"}}}}}}

    def targets(over_mesh: bool) -> dict[str, str]:
        doc = render(tmp_path, inventory, prometheus_scrape_mesh_address=over_mesh,
                     prometheus_scrape_jobs=[{"name": "mesh_agent", "port": 9105}])
        [job] = [j for j in doc["scrape_configs"] if j["job_name"] == "mesh_agent"]
        return {c["labels"]["node"]: c["targets"][0] for c in job["static_configs"]}

    assert targets(True) == {"n1": "10.0.0.1:9105", "n2": "10.77.0.2:9105",
                             "n3": "192.168.1.3:9105"}
    assert targets(False) == {"n1": "10.0.0.1:9105", "n2": "192.168.1.2:9105",
                              "n3": "192.168.1.3:9105"}
