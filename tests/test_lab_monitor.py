"""The URLs `labctl status` prints for the lab monitor's Prometheus, Alertmanager and Grafana
come from the lab's config (role defaults, then inventories/lab/group_vars/all), and the
README gives the same ones."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml
from meshcore_tools.lab import monitor, prometheus, status
from meshcore_tools.lab.topology import MONITOR_MGMT

ROOT = Path(__file__).resolve().parents[1]
STATE = {"monitor": {"mgmt_address": str(MONITOR_MGMT)}}


def role_default(role: str, var: str) -> object:
    return yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())[var]


def test_the_lab_urls_are_the_configured_ports_on_the_monitor_address() -> None:
    by_name = {s.name: s for s in monitor.services(STATE)}
    base = f"http://{MONITOR_MGMT}"
    assert by_name["Prometheus"].url == f"{base}:{role_default('prometheus', 'prometheus_port')}"
    assert by_name["Alertmanager"].url == (
        f"{base}:{role_default('alertmanager', 'alertmanager_port')}")
    assert by_name["Grafana"].url == f"{base}:{role_default('grafana', 'grafana_http_port')}"
    # The lab's inventory: the alert sink is on, Grafana is not installed (and says why).
    lab = yaml.safe_load((monitor.LAB_VARS_DIR / "main.yml").read_text())
    assert lab["alertmanager_lab_sink"] is True and lab["grafana_install"] is False
    assert by_name["Alertmanager"].served
    assert "alerts.jsonl on monitor01" in by_name["Alertmanager"].note
    assert not by_name["Grafana"].served
    assert "grafana_install is false" in by_name["Grafana"].note
    # One mechanism: the status, the report and the chaos runner ask prometheus.url_of.
    assert prometheus.url_of(STATE) == by_name["Prometheus"].url


def test_an_inventory_setting_moves_the_url(tmp_path: Path) -> None:
    (tmp_path / "main.yml").write_text(
        "prometheus_port: 9191\nalertmanager_port: 9193\ngrafana_install: true\n")
    config = monitor.lab_vars(tmp_path)
    by_name = {s.name: s for s in monitor.services(STATE, config)}
    assert by_name["Prometheus"].url.endswith(":9191")
    assert by_name["Alertmanager"].url.endswith(":9193") and by_name["Alertmanager"].note == ""
    assert by_name["Grafana"].served and by_name["Grafana"].note == "login admin / admin"


def test_labctl_status_ends_with_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    # cmd_status with the lab's probes replaced: what it prints after the tables.
    monkeypatch.setattr(status, "load_state", lambda: STATE)
    monkeypatch.setattr(status, "collect", lambda state: {"prometheus": {"error": None}})
    monkeypatch.setattr(status, "all_healthy", lambda report: True)
    monkeypatch.setattr(status, "print_table", lambda report: None)
    monkeypatch.setattr(status, "print_matrix", lambda report: None)
    status.cmd_status(argparse.Namespace(wait=0, json=str(tmp_path / "status.json")))
    out = capsys.readouterr().out
    assert monitor.describe(monitor.services(STATE)) in out
    lines = out.splitlines()
    start = lines.index("monitoring (from this host):")
    assert [line.split()[:2] for line in lines[start + 1:start + 4]] == [
        [s.name, s.url] for s in monitor.services(STATE)]


def test_the_readme_gives_the_urls_the_lab_prints() -> None:
    readme = (ROOT / "README.md").read_text()
    for s in monitor.services(STATE):
        assert s.url in readme, f"README does not give {s.name}'s URL {s.url}"
    user, password = monitor.GRAFANA_LOGIN
    assert f"{user} / {password}" in readme
