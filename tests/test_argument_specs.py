"""Bad role input fails before any task touches a host, naming the variable.

Each case runs the real role against a throwaway localhost inventory (local
connection, --check as a safety net) and checks the run stops at the
argument_specs validation, or, for value formats argument_specs cannot express
(Prometheus durations), at the role's first assert, which runs on the controller.
No containers: the whole file takes a few seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE_PLAYBOOK = ROOT / ".venv" / "bin" / "ansible-playbook"
VALIDATION_TASK = "Validating arguments against arg spec"

CASES = [
    # (role, host vars, text that must appear, tasks allowed to have started)
    ("node_exporter", {"node_exporter_port": "abc"}, ["node_exporter_port"], []),
    (
        "node_exporter",
        {"node_exporter_collectors_enabled": ["sytemd"]},
        ["node_exporter_collectors_enabled"],
        [],
    ),
    ("base", {"base_sshd_permit_root_login": "maybe"}, ["base_sshd_permit_root_login"], []),
    ("base", {"base_rp_filter": 3}, ["base_rp_filter"], []),
    ("base", {"base_packages": {"not": "a list"}}, ["base_packages"], []),
    ("prometheus", {"prometheus_port": "ninety"}, ["prometheus_port"], []),
    (
        "prometheus",
        {"prometheus_scrape_jobs": [{"name": "mesh_agent", "path": "/metrics"}]},
        ["prometheus_scrape_jobs", "port"],
        [],
    ),
    (
        "prometheus",
        {"prometheus_scrape_jobs": [{"name": "mesh_agent", "port": "x9105"}]},
        ["prometheus_scrape_jobs", "port"],
        [],
    ),
    ("grafana", {"grafana_install": "sometimes"}, ["grafana_install"], []),
    ("grafana", {"grafana_package": "grafana-oss"}, ["grafana_package"], []),
    ("grafana", {"grafana_dashboards": {"mesh-core.json": 1}}, ["grafana_dashboards"], []),
    ("prometheus", {"prometheus_rule_files": {"a": 1}}, ["prometheus_rule_files"], []),
    ("batman_adv", {"batman_adv_routing_algo": "BATMAN_VI"}, ["batman_adv_routing_algo"], []),
    ("batman_adv", {"batman_adv_hop_penalty": "high"}, ["batman_adv_hop_penalty"], []),
    (
        "batman_adv",
        {"batman_adv_hard_interfaces": [{"wireless": True}]},
        ["batman_adv_hard_interfaces", "name"],
        [],
    ),
    (
        "batman_adv",
        {"batman_adv_bridge_loop_avoidance": "perhaps"},
        ["batman_adv_bridge_loop_avoidance"],
        [],
    ),
    ("batman_adv", {"batman_adv_lan_ports": {"eth1": "lan"}}, ["batman_adv_lan_ports"], []),
    # An MTU that cannot fit the batman-adv header fails at the role's MTU check.
    (
        "batman_adv",
        {"batman_adv_fragmentation": False, "batman_adv_radio_max_mtu": 1500},
        ["batman_adv_radio_max_mtu", "1532"],
        ["Check values argument_specs cannot express", "Check the MTU arithmetic"],
    ),
    ("etcd", {"etcd_client_port": "https"}, ["etcd_client_port"], []),
    ("etcd", {"etcd_tls_source": "vault"}, ["etcd_tls_source"], []),
    ("etcd", {"etcd_heartbeat_interval_ms": [100]}, ["etcd_heartbeat_interval_ms"], []),
    (
        "etcd",
        {
            "etcd_cluster_group": "all",
            "etcd_address": "127.0.0.1",
            "etcd_heartbeat_interval_ms": 500,
            "etcd_election_timeout_ms": 1000,
        },
        ["etcd_election_timeout_ms"],
        [
            "Check that this host is a member of the cluster group",
            "Check the Raft timers, ports and address",
        ],
    ),
    (
        "mesh_agent",
        {"mesh_agent_link_backend": "babel", "mesh_agent_node_address": "10.77.0.1"},
        ["mesh_agent_link_backend"],
        [],
    ),
    # argument_specs converts 15 to "15" for type str; the role's first task,
    # an assert evaluated on the controller, rejects it as a duration.
    (
        "prometheus",
        {"prometheus_scrape_interval": 15},
        ["prometheus_scrape_interval"],
        ["Check the durations and job names"],
    ),
    ("yggdrasil", {"yggdrasil_multicast_port": "any"}, ["yggdrasil_multicast_port"], []),
    ("yggdrasil", {"yggdrasil_multicast_beacon": "sometimes"}, ["yggdrasil_multicast_beacon"], []),
    ("yggdrasil", {"yggdrasil_node_info": ["not", "a", "dict"]}, ["yggdrasil_node_info"], []),
    ("spire_server", {"spire_server_bind_port": "eighty"}, ["spire_server_bind_port"], []),
    ("spire_server", {"spire_server_node_attestors": ["tpm"]}, ["spire_server_node_attestors"], []),
    ("spire_server", {"spire_server_datastore_type": "etcd"}, ["spire_server_datastore_type"], []),
    ("spire_server", {"spire_server_extra_entries": "entry"}, ["spire_server_extra_entries"], []),
    ("spire_agent", {"spire_agent_node_attestor": "aws_iid"}, ["spire_agent_node_attestor"], []),
    ("spire_agent", {"spire_agent_server_port": "x8081"}, ["spire_agent_server_port"], []),
    (
        "spire_agent",
        {"spire_agent_insecure_bootstrap": "perhaps"},
        ["spire_agent_insecure_bootstrap"],
        [],
    ),
    # Well typed but incomplete: the role's first assert (on the controller) names it.
    (
        "spire_agent",
        {"spire_agent_server_address": ""},
        ["spire_agent_server_address"],
        [
            "Name the binary of this release",
            "Refuse a missing server address or an unverifiable first connection",
        ],
    ),
    ("lab_pki", {"lab_pki_cert_days": "thirty"}, ["lab_pki_cert_days"], []),
    ("lab_pki", {"lab_pki_ca_days": [3650]}, ["lab_pki_ca_days"], []),
    ("spire_release", {"spire_release_binary": "spire-cli"}, ["spire_release_binary"], []),
    (
        "spire_release",
        {"spire_release_archive_sha256": "not-a-checksum"},
        ["spire_release_archive_sha256"],
        ["Refuse a download without a checksum, or a malformed checksum"],
    ),
]
MY_ROLES = [
    "yggdrasil", "spire_server", "spire_agent", "spire_release", "lab_pki", "mesh_link", "chrony",
    "chaos_reaper",
]  # fmt: skip


def _run(tmp_path: Path, role: str, host_vars: dict, *extra: str) -> tuple[int, str]:
    inventory = {
        "all": {
            "hosts": {
                "localhost": {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": sys.executable,
                    **host_vars,
                }
            }
        }
    }
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "play.yml").write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Bad input",
                    "hosts": "all",
                    "gather_facts": False,
                    "roles": [{"role": role}],
                }
            ]
        )
    )
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    proc = subprocess.run(
        [
            str(ANSIBLE_PLAYBOOK),
            "-i",
            str(tmp_path / "inventory.yml"),
            str(tmp_path / "play.yml"),
            "--check",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("role", "host_vars", "needles", "allowed_tasks"),
    CASES,
    ids=[f"{c[0]}-{next(iter(c[1]))}" for c in CASES],
)
def test_bad_input_fails_before_any_real_task(tmp_path, role, host_vars, needles, allowed_tasks):
    rc, output = _run(tmp_path, role, host_vars)
    assert rc != 0, output
    # Only the error text counts: the failed result also dumps the whole spec,
    # which names every variable.
    errors = re.findall(r"^\[ERROR\]: (.*?)^Origin:", output, flags=re.MULTILINE | re.DOTALL)
    assert errors, output
    for needle in needles:
        assert needle in errors[0], errors[0]
    started = re.findall(r"^TASK \[(?:[^:\]]+ : )?(.+?)\]", output, flags=re.MULTILINE)
    assert started, output
    assert started[0].startswith(VALIDATION_TASK), started
    assert started[1:] == allowed_tasks, started
    assert re.search(r"localhost\s+: ok=\d+\s+changed=0\s", output), output


@pytest.mark.parametrize(
    "role", ["base", "node_exporter", "prometheus", "grafana", "batman_adv", "etcd", *MY_ROLES]
)
def test_defaults_satisfy_the_specs(tmp_path, role):
    """Guards against a spec/default mismatch. The validation task is tagged
    `always`, so an unknown tag runs it and nothing else."""
    rc, output = _run(tmp_path, role, {}, "--tags", "meshcore-validate-only")
    assert rc == 0, output
    started = re.findall(r"^TASK \[(?:[^:\]]+ : )?(.+?)\]", output, flags=re.MULTILINE)
    assert len(started) == 1 and started[0].startswith(VALIDATION_TASK), started


@pytest.mark.parametrize(
    "role",
    ["base", "node_exporter", "prometheus", "grafana", "batman_adv", "etcd", "mesh_agent",
     *MY_ROLES],
)
def test_specs_defaults_and_readme_agree(role):
    """argument_specs, defaults/main.yml and the README table name the same variables,
    with the same defaults, and every default carries a comment. A required option
    has no default in the spec (defaults/main.yml may derive it from an inventory
    variable). The README tables also cover the other entry points' options."""
    role_dir = ROOT / "roles" / role
    specs = yaml.safe_load((role_dir / "meta" / "argument_specs.yml").read_text())[
        "argument_specs"
    ]
    options = specs["main"]["options"]
    defaults_text = (role_dir / "defaults" / "main.yml").read_text()
    defaults = yaml.safe_load(defaults_text)
    assert set(defaults) == set(options)
    for name, option in options.items():
        assert option.get("description"), name
        assert option.get("type"), name
        if option.get("required"):
            assert "default" not in option, name
            continue
        assert defaults[name] == option.get("default"), name
    lines = defaults_text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z0-9_]+:", line):
            assert lines[i - 1].startswith("#"), f"{line} has no comment"
    readme = (role_dir / "README.md").read_text()
    in_table = set(re.findall(r"^\| `([a-z0-9_]+)` \|", readme, flags=re.MULTILINE))
    assert in_table == {name for spec in specs.values() for name in spec["options"]}
