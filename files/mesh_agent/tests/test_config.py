from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from mesh_agent.__main__ import main
from mesh_agent.config import AgentConfig, ConfigError, load_config, parse_config

BASE = {"node_name": "n1", "node_address": "10.77.0.1"}


def test_defaults() -> None:
    cfg = parse_config(dict(BASE))
    assert isinstance(cfg, AgentConfig)
    assert cfg.node_address == ipaddress.IPv4Address("10.77.0.1")
    assert (cfg.udp_port, cfg.hello_interval_ms, cfg.dead_multiplier) == (6767, 50, 3)
    assert (cfg.mode, cfg.k, cfg.disjoint, cfg.route_protocol) == ("observe", 3, "edge", 77)
    assert cfg.interfaces is None and cfg.interface_prefix == "mesh"
    assert cfg.api_endpoints == [("127.0.0.1", 9105)]  # loopback only unless configured
    assert cfg.clock_trust == "synchronized"
    assert str(cfg.identity.cert) == "/etc/mesh-agent/pki/node.crt"
    assert cfg.trust_domain == "mesh.lab" and not cfg.enforce


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"node_name": None}, "node_name"),
        ({"node_address": "10.77.0.300"}, "node_address"),
        ({"node_address": None}, "node_address"),
        ({"udp_port": 70000}, "udp_port"),
        ({"udp_port": "6767"}, "udp_port"),
        ({"hello_interval_ms": 0}, "hello_interval_ms"),
        ({"dead_multiplier": 1}, "dead_multiplier"),
        ({"mode": "yolo"}, "mode"),
        ({"k": 2}, "k"),
        ({"k": 6}, "k"),
        ({"disjoint": "path"}, "disjoint"),
        ({"interfaces": "mesh0"}, "interfaces"),
        ({"interfaces": ["eth0"]}, "interfaces"),
        ({"api_listen": "9105"}, "api_listen"),
        ({"api_listen": ["127.0.0.1:9105", "mgmt-host:9105"]}, "api_listen"),
        ({"api_listen": []}, "api_listen"),
        ({"node_address": "224.0.0.1"}, "node_address"),
        ({"node_address": "0.0.0.0"}, "node_address"),
        ({"node_address": "127.0.0.1"}, "node_address"),
        ({"node_address": "255.255.255.255"}, "node_address"),
        ({"node_address": "169.254.1.1"}, "node_address"),
        ({"identity": ""}, "identity"),
        ({"identity": "/etc/pki"}, "identity"),
        ({"clock_trust": "sometimes"}, "clock_trust"),
        ({"identity": {"cert": 5}}, "identity.cert"),
        ({"identity": {"crt": "/x"}}, "identity.crt"),
        ({"advert_max_age_s": 0.5, "advert_interval_s": 1.0}, "advert_max_age_s"),
        ({"route_protocol": 2}, "route_protocol"),
        ({"typo_key": 1}, "typo_key"),
        ({"mapek": {"lease": {"ca": 5}}}, "mapek.lease.ca"),
    ],
)
def test_errors_name_the_key(patch: dict[str, Any], key: str) -> None:
    data = {**BASE, **patch}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert str(err.value).startswith(key + ":")


def test_load_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "agent.yml"
    good.write_text(
        "node_name: n2\nnode_address: 10.77.0.2\nmode: enforce\ninterfaces: [mesh0, mesh1]\n"
        "identity: {cert: /p/c, key: /p/k, ca: /p/ca}\nk: 4\ndisjoint: node\n"
    )
    cfg = load_config(good)
    assert cfg.enforce and cfg.interfaces == ("mesh0", "mesh1") and cfg.k == 4
    assert main(["check-config", "--config", str(good)]) == 0
    bad = tmp_path / "bad.yml"
    bad.write_text("node_name: n2\nnode_address: 10.77.0.2\nmode: sometimes\n")
    assert main(["check-config", "--config", str(bad)]) != 0
    assert "mode:" in capsys.readouterr().err
    assert main(["check-config", "--config", str(tmp_path / "missing.yml")]) != 0
    (tmp_path / "list.yml").write_text("- 1\n")
    with pytest.raises(ConfigError):
        load_config(tmp_path / "list.yml")


def test_run_without_identity_files_fails_cleanly(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yml"
    cfg.write_text(
        f"node_name: n1\nnode_address: 10.77.0.1\nidentity: {{cert: {tmp_path}/c, "
        f"key: {tmp_path}/k, ca: {tmp_path}/ca}}\n"
    )
    assert main(["run", "--config", str(cfg)]) == 1


def test_api_listen_list_and_v6() -> None:
    cfg = parse_config({**BASE, "api_listen": ["127.0.0.1:9105", "10.79.0.5:9105", "[::1]:9106"]})
    assert cfg.api_endpoints == [("127.0.0.1", 9105), ("10.79.0.5", 9105), ("::1", 9106)]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        # Unknown keys of mixed types (int, bool, str) used to raise TypeError in sorted().
        ("node_name: n1\nnode_address: 10.77.0.1\n1: x\nzz: y\ntrue: z\n", "1"),
        ("node_name: n1\nnode_address: 10.77.0.1\nlink: {1: x, foo: y}\n", "link.1"),
        ("node_name: n1\nnode_address: 10.77.0.1\nidentity: {1: x, foo: y}\n", "identity.1"),
        ("node_name: n1\nnode_address: 224.0.0.1\n", "node_address"),
        ("node_name: n1\nnode_address: 10.77.0.1\nidentity: ''\n", "identity"),
    ],
)
def test_check_config_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str
) -> None:
    path = tmp_path / "agent.yml"
    path.write_text(text)
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f": {key}:" in err, err


def test_check_config_survives_bytes_and_depth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"node_name: n1\nnode_address: \xff\xfe10.77.0.1\n")
    deep = tmp_path / "deep.yml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    for path, what in ((binary, "not UTF-8"), (deep, "")):
        assert main(["check-config", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and "<file>:" in err, err
        assert what in err


def test_the_readme_table_is_the_schema() -> None:
    """files/mesh_agent/README.md lists every key with the default AgentConfig declares."""
    import dataclasses
    import re

    from mesh_agent.config import schema

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_.{},]+)` \| ([^|]+) \|", readme, flags=re.MULTILINE))
    keys = {key for key, _d, _c in schema()}
    listed = {k for k in rows if not k.startswith("identity.")} | {
        f"identity.{p}" for k in rows if k.startswith("identity.{")
        for p in k[len("identity.{"):-1].split(",")}
    assert listed == keys
    def same(text: str, default: object) -> bool:
        text = text.strip("` ")
        if isinstance(default, bool):
            return text == str(default).lower()
        if isinstance(default, int | float):
            return float(text) == float(default)
        return text == str(default)

    for key, default, _check in schema():
        shown = rows.get(key)
        if shown is None or default is dataclasses.MISSING or isinstance(default, tuple | None):
            continue  # required, unset or a list: described in words
        assert same(shown, default), (key, shown, default)
