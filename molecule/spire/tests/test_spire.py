"""Real state after spire_server and spire_agent, without a SPIRE binary.

No SPIRE release can be fetched on this machine (no internet in molecule), so
the roles run with spire_*_install_binary=false and the services stay stopped.
Checked here: users and modes, server.conf and agent.conf parsed as HCL (the
python-hcl2 parser), the registration entries, and both units with
``systemd-analyze verify``, which needs the ExecStart binary to exist: a
placeholder script is put at the binary path for the duration of that check
only, and removed after it.
"""

from __future__ import annotations

import json
import os
import re

import hcl2
import pytest
import testinfra.utils.ansible_runner

testinfra_hosts = [
    f"podman://{name}"
    for name in testinfra.utils.ansible_runner.AnsibleRunner(
        os.environ["MOLECULE_INVENTORY_FILE"]
    ).get_hosts("all")
]
VERSION = "1.10.4"
BIN = f"/opt/spire/{VERSION}/bin"
PLACEHOLDER = "#!/bin/sh\n# PLACEHOLDER for systemd-analyze verify only (no SPIRE binary here)\nexit 1\n"


def hcl(host, path: str) -> dict:
    return hcl2.loads(host.file(path).content_string)


def unquote(value: object) -> object:
    """python-hcl2 keeps string literals quoted ('"x"'); compare on the bare value."""
    return value[1:-1] if isinstance(value, str) and value[:1] == value[-1:] == '"' else value


def block(blocks: list[dict], name: str) -> dict:
    for b in blocks:
        for key, value in b.items():
            if unquote(key) == name:
                return value
    raise AssertionError(f"no block {name!r} in {blocks}")


def test_no_binary_was_installed_here(host):
    # The install path (get_url with sha256, or a controller archive) needs a
    # SPIRE release; it is exercised on hardware, not on this machine.
    assert not host.file(f"{BIN}/spire-server").exists
    assert not host.file(f"{BIN}/spire-agent").exists


def test_service_user_and_directories(host):
    assert host.user("spire").shell == "/usr/sbin/nologin"
    for path, owner, mode in (("/etc/spire/server", "root", 0o750),
                              ("/var/lib/spire/server", "spire", 0o700),
                              ("/etc/spire/agent", "root", 0o750),
                              ("/var/lib/spire/agent", "spire", 0o700)):
        d = host.file(path)
        assert (d.user, d.group, d.mode) == (owner, "spire", mode), path


def test_server_conf_parses_with_the_settings(host):
    f = host.file("/etc/spire/server/server.conf")
    assert (f.user, f.group, f.mode) == ("root", "spire", 0o640)
    conf = hcl(host, "/etc/spire/server/server.conf")
    server = conf["server"][0]
    assert unquote(server["trust_domain"]) == "mesh.lab"
    assert unquote(server["ca_ttl"]) == "168h"
    assert unquote(server["default_x509_svid_ttl"]) == "24h"
    assert unquote(server["ca_key_type"]) == "ec-p256"
    assert unquote(server["bind_port"]) == "8081"
    plugins = conf["plugins"][0]
    datastore = block(plugins["DataStore"], "sql")["plugin_data"][0]
    assert unquote(datastore["database_type"]) == "sqlite3"
    assert unquote(datastore["connection_string"]) == "/var/lib/spire/server/datastore.sqlite3"
    attestors = {unquote(k) for b in plugins["NodeAttestor"] for k in b}
    assert attestors == {"join_token", "x509pop"}
    x509pop = block(plugins["NodeAttestor"], "x509pop")["plugin_data"][0]
    assert unquote(x509pop["ca_bundle_path"]) == "/etc/spire/server/x509pop-ca.pem"
    assert unquote(x509pop["agent_path_template"]) == "x509pop/cn/{{ .Subject.CommonName }}"
    assert host.file("/etc/spire/server/x509pop-ca.pem").contains("BEGIN CERTIFICATE")


def test_agent_conf_parses_with_x509pop(host):
    conf = hcl(host, "/etc/spire/agent/agent.conf")
    agent = conf["agent"][0]
    assert unquote(agent["server_address"]) == "10.77.0.1"
    assert unquote(agent["socket_path"]) == "/run/spire/agent/public/api.sock"
    assert unquote(agent["workload_x509_svid_key_type"]) == "ec-p256"
    assert agent["insecure_bootstrap"] is True
    assert "join_token" not in agent
    plugins = conf["plugins"][0]
    pop = block(plugins["NodeAttestor"], "x509pop")["plugin_data"][0]
    assert unquote(pop["private_key_path"]) == "/etc/spire/agent/x509pop.key"
    assert block(plugins["WorkloadAttestor"], "unix") is not None
    key = host.file("/etc/spire/agent/x509pop.key")
    assert (key.user, key.mode) == ("root", 0o600)


def test_registration_entries_for_the_mesh_agent(host):
    entries = json.loads(host.file("/etc/spire/server/entries.json").content_string)["entries"]
    name = host.backend.name
    assert {"spiffe_id": f"spiffe://mesh.lab/host/{name}", "parent_id": "spiffe://mesh.lab/spire/server",
            "selectors": [{"type": "x509pop", "value": f"subject:cn:{name}"}]} in entries
    assert {"spiffe_id": f"spiffe://mesh.lab/node/{name}", "parent_id": f"spiffe://mesh.lab/host/{name}",
            "selectors": [{"type": "unix", "value": "user:meshcore"}],
            "x509_svid_ttl": 3600} in entries


@pytest.mark.parametrize("unit,binary", [("spire-server", "spire-server"),
                                         ("spire-agent", "spire-agent")])
def test_unit_verifies_and_is_hardened(host, unit, binary):
    path = f"/etc/systemd/system/{unit}.service"
    text = host.file(path).content_string
    for line in ("User=spire", "NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=",
                 "PrivateDevices=yes", "MemoryDenyWriteExecute=yes", "SystemCallFilter=@system-service"):
        assert line in text.splitlines(), line
    assert not host.service(unit).is_running
    host.check_output(f"mkdir -p {BIN}")
    host.check_output(f"printf %s {PLACEHOLDER!r} > {BIN}/{binary} && chmod 0755 {BIN}/{binary}")
    try:
        verify = host.run(f"systemd-analyze verify {path}")
        security = host.run(f"systemd-analyze security --offline=true {path}")
    finally:
        host.check_output(f"rm -f {BIN}/{binary}")
    assert verify.rc == 0 and unit not in verify.stderr, verify.stderr
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert score is not None, security.stdout + security.stderr
    assert float(score.group(1)) <= 3.0, security.stdout
