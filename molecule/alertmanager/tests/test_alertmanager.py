"""Real state after the prometheus and alertmanager roles: an alert travels from a
Prometheus rule through Alertmanager to the lab's webhook sink, which writes it to a file."""

from __future__ import annotations

import json
import os
import re
import time

import testinfra.utils.ansible_runner

testinfra_hosts = [
    f"podman://{name}"
    for name in testinfra.utils.ansible_runner.AnsibleRunner(
        os.environ["MOLECULE_INVENTORY_FILE"]
    ).get_hosts("all")
]
SINK_FILE = "/var/lib/meshcore-alert-sink/alerts.jsonl"


def get_json(host, url: str):
    out = host.check_output(
        "python3 -c 'import sys, urllib.request; "
        "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' %s", url)
    return json.loads(out)


def wait(predicate, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(2)


def test_services_enabled_and_running(host):
    for unit in ("prometheus-alertmanager", "meshcore-alert-sink", "prometheus"):
        svc = host.service(unit)
        assert svc.is_enabled and svc.is_running, unit


def test_config_passes_amtool_and_routes_to_the_sink(host):
    host.check_output("amtool check-config /etc/prometheus/alertmanager.yml")
    f = host.file("/etc/prometheus/alertmanager.yml")
    assert f.user == "root" and f.group == "prometheus" and f.mode == 0o640
    assert '"http://127.0.0.1:9097/alerts"' in f.content_string
    args = host.file("/etc/default/prometheus-alertmanager").content_string
    assert "--web.listen-address=0.0.0.0:9093" in args
    assert re.search(r'--cluster\.listen-address=[ "]', args), args  # gossip off


def test_prometheus_sends_to_the_alertmanager(host):
    def active():
        data = get_json(host, "http://127.0.0.1:9090/api/v1/alertmanagers")["data"]
        return [a["url"] for a in data["activeAlertmanagers"]]

    assert wait(active) == ["http://127.0.0.1:9093/api/v2/alerts"]


def test_the_always_firing_alert_reaches_the_sink_file(host):
    def received():
        f = host.file(SINK_FILE)
        if not f.exists:
            return []
        return [a for line in f.content_string.splitlines()
                for a in json.loads(line)["alerts"]
                if a["labels"]["alertname"] == "MeshCoreTestAlwaysFiring"]

    alerts = wait(received)
    assert alerts, f"no MeshCoreTestAlwaysFiring in {SINK_FILE}"
    assert alerts[0]["status"] == "firing" and alerts[0]["labels"]["node"] == "molecule"
