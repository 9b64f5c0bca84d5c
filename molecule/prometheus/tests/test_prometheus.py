"""Real state after the prometheus role: config, unit, readiness and a real scrape."""

from __future__ import annotations

import json
import os
import time

import testinfra.utils.ansible_runner

# Only the monitor runs Prometheus. The podman backend execs straight into the
# container (the ansible backend spawns an ansible run per check, far slower).
testinfra_hosts = [
    f"podman://{name}"
    for name in testinfra.utils.ansible_runner.AnsibleRunner(
        os.environ["MOLECULE_INVENTORY_FILE"]
    ).get_hosts("monitor")
]

# Instance names carry the checkout's id (Makefile: MESHCORE_CHECKOUT_ID), so two
# checkouts can run this scenario at once.
_SUFFIX = os.environ.get("MESHCORE_CHECKOUT_ID", "0")
NODE, MONITOR = f"mc-prom-node-{_SUFFIX}", f"mc-prom-monitor-{_SUFFIX}"

FETCH = (
    "python3 -c 'import sys, urllib.request;"
    " sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' {}"
)


def test_config_is_valid_and_templated(host):
    config = host.file("/etc/prometheus/prometheus.yml")
    assert config.user == "root"
    assert config.mode == 0o644
    assert config.content_string.startswith("#")  # ansible_managed header
    assert "scrape_interval: 5s" in config.content_string
    assert "evaluation_interval: 5s" in config.content_string
    assert '"/etc/prometheus/rules.d/*.yml"' in config.content_string
    host.run_expect([0], "promtool check config /etc/prometheus/prometheus.yml")


def test_rules_dir_exists(host):
    rules = host.file("/etc/prometheus/rules.d")
    assert rules.is_directory
    assert rules.mode == 0o755


def test_service_enabled_running_with_flags(host):
    service = host.service("prometheus")
    assert service.is_enabled
    assert service.is_running
    process = host.process.get(comm="prometheus")
    assert process.user == "prometheus"
    assert "--web.listen-address=0.0.0.0:9090" in process.args
    assert "--storage.tsdb.retention.time=2d" in process.args


def test_port_listening_and_ready(host):
    assert host.socket("tcp://0.0.0.0:9090").is_listening
    assert "Ready" in host.check_output(FETCH.format("http://127.0.0.1:9090/-/ready"))


def test_both_node_exporters_scraped_and_up(host):
    # Scrape interval is 5s; allow a few rounds after a (re)start.
    deadline = time.monotonic() + 60
    while True:
        body = json.loads(host.check_output(FETCH.format("http://127.0.0.1:9090/api/v1/targets")))
        targets = [
            t for t in body["data"]["activeTargets"] if t["labels"]["job"] == "node_exporter"
        ]
        health = {t["labels"]["node"]: t["health"] for t in targets}
        if health == {MONITOR: "up", NODE: "up"} or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert health == {MONITOR: "up", NODE: "up"}, targets
    # The mesh node is scraped over the network on its management address, not localhost.
    node = next(t for t in targets if t["labels"]["node"] == NODE)
    assert not node["scrapeUrl"].startswith("http://127.")
    assert node["scrapeUrl"].endswith(":9100/metrics")


def test_self_scrape_up(host):
    deadline = time.monotonic() + 30
    while True:
        body = json.loads(host.check_output(FETCH.format("http://127.0.0.1:9090/api/v1/targets")))
        own = [t for t in body["data"]["activeTargets"] if t["labels"]["job"] == "prometheus"]
        if (own and own[0]["health"] == "up") or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert own and own[0]["health"] == "up", own


def test_mesh_rules_installed_and_evaluated(host):
    rules = host.file("/etc/prometheus/rules.d/meshcore.yml")
    assert rules.user == "root"
    assert rules.mode == 0o644
    host.run_expect([0], "promtool check rules /etc/prometheus/rules.d/meshcore.yml")
    deadline = time.monotonic() + 60
    while True:
        body = json.loads(host.check_output(FETCH.format("http://127.0.0.1:9090/api/v1/rules")))
        groups = {g["name"]: g for g in body["data"]["groups"]}
        evaluated = all(g.get("lastEvaluation", "0001").startswith("20") for g in groups.values())
        if (evaluated and len(groups) == 2) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert set(groups) == {"meshcore.recording", "meshcore.alerts"}
    for group in groups.values():
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule
    # Both node_exporters are up: the recording rule says so.
    deadline = time.monotonic() + 60
    while True:
        query = FETCH.format("'http://127.0.0.1:9090/api/v1/query?query=meshcore:node_up:ratio'")
        result = json.loads(host.check_output(query))["data"]["result"]
        if (result and result[0]["value"][1] == "1") or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert result and result[0]["value"][1] == "1", result
