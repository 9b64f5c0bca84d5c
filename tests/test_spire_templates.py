"""The SPIRE roles' templates render to valid HCL/JSON for every attestation mix.

The molecule scenario checks one combination on a real node; this renders the
templates with Ansible's own filters for the others (join_token or x509pop,
sqlite3 or postgres, memory key manager) and parses them with python-hcl2, the
parser the scenario uses. It also checks the yggdrasil role never lets a task
that handles the private key log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hcl2
import jinja2
import pytest
import yaml
from meshcore_testkit.roles import defaults, render

ROOT = Path(__file__).resolve().parents[1]


def unquote(value: Any) -> Any:
    return value[1:-1] if isinstance(value, str) and value[:1] == value[-1:] == '"' else value


def block(blocks: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for b in blocks:
        for key, value in b.items():
            if unquote(key) == name:
                return value
    raise AssertionError(f"no block {name!r}")


@pytest.mark.parametrize(
    ("attestors", "datastore", "key_manager"),
    [(["join_token"], "sqlite3", "disk"), (["x509pop"], "postgres", "memory"),
     (["join_token", "x509pop"], "mysql", "disk")],
)
def test_server_conf_is_hcl_for_each_mix(attestors, datastore, key_manager) -> None:
    text = render("spire_server", "server.conf.j2", spire_server_node_attestors=attestors,
                  spire_server_datastore_type=datastore, spire_server_key_manager=key_manager,
                  spire_server_datastore_connection_string="dbname=spire host=db")
    conf = hcl2.loads(text)
    plugins = conf["plugins"][0]
    assert {unquote(k) for b in plugins["NodeAttestor"] for k in b} == set(attestors)
    sql = block(plugins["DataStore"], "sql")["plugin_data"][0]
    assert unquote(sql["database_type"]) == datastore
    km = block(plugins["KeyManager"], key_manager)["plugin_data"]
    assert ("keys_path" in km[0]) == (key_manager == "disk")
    if "x509pop" in attestors:
        pop = block(plugins["NodeAttestor"], "x509pop")["plugin_data"][0]
        assert unquote(pop["agent_path_template"]) == "x509pop/cn/{{ .Subject.CommonName }}"
    assert unquote(conf["server"][0]["trust_domain"]) == "mesh.lab"


@pytest.mark.parametrize("attestor", ["join_token", "x509pop"])
def test_agent_conf_is_hcl_for_each_attestor(attestor) -> None:
    text = render("spire_agent", "agent.conf.j2", spire_agent_node_attestor=attestor,
                  spire_agent_server_address="10.77.0.1",
                  spire_agent_trust_bundle_src="files/bundle.pem")
    agent = hcl2.loads(text)["agent"][0]
    assert unquote(agent["trust_bundle_path"]) == "/etc/spire/agent/bootstrap.crt"
    assert "insecure_bootstrap" not in agent
    # The token reaches the agent through -expandEnv, never written into the file.
    assert ("join_token" in agent) == (attestor == "join_token")
    if attestor == "join_token":
        assert "${SPIRE_JOIN_TOKEN}" in agent["join_token"]


def test_archive_url_follows_version_and_arch() -> None:
    d = defaults("spire_release")
    env = jinja2.Environment()
    url = env.from_string(d["spire_release_archive_url"]).render(
        spire_release_version="1.10.4", ansible_facts={"architecture": "aarch64"})
    assert url == ("https://github.com/spiffe/spire/releases/download/v1.10.4/"
                   "spire-1.10.4-linux-arm64-musl.tar.gz")


def test_entries_cover_every_mesh_node() -> None:
    hosts = ["gw1", "n2", "n3"]
    hostvars = {h: {"mesh_node_address": f"10.77.0.{i}"} for i, h in enumerate(hosts, 1)}
    text = render("spire_server", "entries.json.j2", spire_server_node_attestors=["x509pop"],
                  groups={"mesh_nodes": hosts}, hostvars=hostvars)
    entries = json.loads(text)["entries"]
    workloads = [e for e in entries if "/node/" in e["spiffe_id"]]
    aliases = [e for e in entries if e["parent_id"] == "spiffe://mesh.lab/spire/server"]
    assert sorted(e["spiffe_id"] for e in workloads) == [
        f"spiffe://mesh.lab/node/{h}" for h in hosts
    ]
    assert all(e["selectors"] == [{"type": "unix", "value": "user:meshcore"}] for e in workloads)
    assert sorted(e["selectors"][0]["value"] for e in aliases) == [f"subject:cn:{h}" for h in hosts]
    # The node address rides in the SVID as its in-addr.arpa DNS SAN (SPIRE has no IP SANs),
    # which the agent's binding check reads (mesh_agent.identity.cert_addresses).
    from mesh_agent.identity import address_san

    by_id = {e["spiffe_id"]: e for e in workloads}
    for h, hv in hostvars.items():
        assert by_id[f"spiffe://mesh.lab/node/{h}"]["dns_names"] == [
            address_san(hv["mesh_node_address"])
        ]


def _tasks(path: Path) -> list[dict[str, Any]]:
    out = []
    for task in yaml.safe_load(path.read_text()):
        out.append(task)
        for inner in task.get("block", []):
            out.append({**inner, "no_log": inner.get("no_log", task.get("no_log"))})
    return out


def test_yggdrasil_key_never_passes_through_ansible() -> None:
    """The node's key is made and used by meshcore-yggdrasil-config on the node
    (tests/test_yggdrasil_keygen.py checks it never prints it): no task reads it,
    generates it or templates it; the config template gets a placeholder."""
    placeholders = 0
    for task in _tasks(ROOT / "roles" / "yggdrasil" / "tasks" / "main.yml"):
        text = json.dumps(task)
        assert not any(s in text for s in ("genconf", "slurp", "private.key")), task["name"]
        if "yggdrasil_private_key" in text:
            assert task["vars"]["yggdrasil_private_key"] == "@MESHCORE_PRIVATE_KEY@", task["name"]
            placeholders += 1
    assert placeholders == 1
