"""The mesh_agent role and the agent agree on every default (the agent's AgentConfig owns them).

The role's agent.yml.j2 is rendered with the role's own defaults (and a node
address, the one required value), parsed by the agent's own parser, and
every key it writes must equal the default AgentConfig has for that key: a
default changed on one side only fails here.
"""

from __future__ import annotations

from typing import Any

import yaml
from mesh_agent.config import AgentConfig, parse_config
from meshcore_testkit.roles import render

# Values that are per node by nature: the role fills them from the inventory.
PER_NODE = {"node_name", "node_address"}


def leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def attr(cfg: object, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_role_defaults_render_the_agents_defaults() -> None:
    rendered = yaml.safe_load(render("mesh_agent", "agent.yml.j2", mesh_node_address="10.77.0.9"))
    from_role = parse_config(rendered)
    agent_default = AgentConfig(node_name=from_role.node_name, node_address=from_role.node_address)
    keys = sorted(set(leaves(rendered)) - PER_NODE)
    assert len(keys) >= 15, keys  # the role writes the whole config, not a few keys
    differ = {k: (attr(from_role, k), attr(agent_default, k)) for k in keys
              if attr(from_role, k) != attr(agent_default, k)}
    assert differ == {}, f"role default != agent default (role, agent): {differ}"


def test_role_sets_log_level_echo_and_dead_time() -> None:
    rendered = yaml.safe_load(render(
        "mesh_agent", "agent.yml.j2", mesh_node_address="10.77.0.9", mesh_agent_log_level="DEBUG",
        mesh_agent_link_echo=False, mesh_agent_link_dead_after_ms=9000))
    cfg = parse_config(rendered)
    assert (cfg.log_level, cfg.link.echo, cfg.link.dead_after_ms) == ("DEBUG", False, 9000)


def test_role_choices_are_the_agents() -> None:
    """Every role variable with choices that maps to an agent key offers the agent's own."""
    from mesh_agent.config import OneOf, schema
    from meshcore_tools import ROOT

    spec = yaml.safe_load((ROOT / "roles/mesh_agent/meta/argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    agent = {key: chk for key, _default, chk in schema()}
    pairs = {"mesh_agent_mode": "mode", "mesh_agent_disjoint": "disjoint",
             "mesh_agent_log_level": "log_level", "mesh_agent_link_backend": "link.backend",
             "mesh_agent_clock_trust": "clock_trust", "mesh_agent_mapek_mode": "mapek.mode",
             "mesh_agent_mapek_policy": "mapek.policy"}
    for var, key in pairs.items():
        chk = agent[key]
        assert isinstance(chk, OneOf), key
        assert tuple(options[var]["choices"]) == chk.choices, var


def test_unit_writes_only_the_state_dir() -> None:
    default = render("mesh_agent", "mesh-agent.service.j2", mesh_node_address="10.77.0.9")
    assert "StateDirectory=mesh-agent\n" in default and "ReadWritePaths" not in default
    elsewhere = render("mesh_agent", "mesh-agent.service.j2", mesh_node_address="10.77.0.9",
                       mesh_agent_state_dir="/srv/mesh-agent")
    assert "ReadWritePaths=/srv/mesh-agent\n" in elsewhere and "StateDirectory" not in elsewhere
    nested = render("mesh_agent", "mesh-agent.service.j2", mesh_node_address="10.77.0.9",
                    mesh_agent_state_dir="/var/lib/meshcore/agent")
    assert "StateDirectory=meshcore/agent\n" in nested
