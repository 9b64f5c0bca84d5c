"""Real state after the node_exporter role: unit, flags, port and metrics."""

from __future__ import annotations

import os

import testinfra.utils.ansible_runner

# The podman backend execs straight into the container (the ansible backend
# spawns an ansible run per check and is far slower).
testinfra_hosts = [
    f"podman://{name}"
    for name in testinfra.utils.ansible_runner.AnsibleRunner(
        os.environ["MOLECULE_INVENTORY_FILE"]
    ).get_hosts("all")
]

FETCH = (
    "python3 -c 'import sys, urllib.request;"
    " sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' {}"
)


def test_package_installed(host):
    assert host.package("prometheus-node-exporter").is_installed


def test_defaults_file_carries_the_flags(host):
    defaults = host.file("/etc/default/prometheus-node-exporter")
    assert defaults.user == "root"
    assert defaults.mode == 0o644
    args = [line for line in defaults.content_string.splitlines() if line.startswith("ARGS=")]
    assert args == [
        'ARGS="--web.listen-address=0.0.0.0:9110 --collector.processes'
        ' --no-collector.arp --no-collector.wifi"'
    ]


def test_service_enabled_and_running_unprivileged(host):
    service = host.service("prometheus-node-exporter")
    assert service.is_enabled
    assert service.is_running
    process = host.process.get(comm="prometheus-node")
    assert process.user == "prometheus"
    assert "--collector.processes" in process.args


def test_port_listening(host):
    assert host.socket("tcp://0.0.0.0:9110").is_listening
    assert not host.socket("tcp://0.0.0.0:9100").is_listening


def test_metrics_served_with_the_chosen_collectors(host):
    body = host.check_output(FETCH.format("http://127.0.0.1:9110/metrics"))
    assert "node_exporter_build_info" in body
    assert 'node_scrape_collector_success{collector="processes"} 1' in body
    assert 'collector="arp"' not in body
