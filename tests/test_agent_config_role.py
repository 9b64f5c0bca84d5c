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
