"""site.yml composes the roles by inventory group (no hosts are touched).

Runs ansible-playbook --list-hosts / --list-tasks against the documented
50-node example inventory: mesh nodes get batman_adv (the example's
mesh_link_backend) and the agent, the three gateways get etcd, the monitor
gets Prometheus and Alertmanager.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAYBOOK = ROOT / ".venv" / "bin" / "ansible-playbook"


def _plays(flag: str) -> list[tuple[str, str, str]]:
    """(hosts pattern, play name, listing) per play, in order."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.run(
        [str(PLAYBOOK), "-i", "inventories/example", "playbooks/site.yml", flag],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True,
    )
    plays = re.split(r"^\s*play #\d+ \(([^)]*)\): (.*?)\s+TAGS: \[.*?\]$", proc.stdout,
                     flags=re.MULTILINE)[1:]
    return list(zip(plays[::3], plays[1::3], plays[2::3], strict=True))


def _list(flag: str) -> dict[str, str]:
    """The listing of each group's provisioning play (not the maintenance window's)."""
    return {pattern: text for pattern, name, text in _plays(flag)
            if "maintenance window" not in name}


def test_plays_target_the_groups() -> None:
    plays = _list("--list-hosts")
    # The site config is checked first (on the controller, then for every host).
    assert list(plays) == ["localhost:all", "all", "spire_servers", "mesh_nodes", "gateways",
                           "monitor"]
    assert "hosts (50)" in plays["mesh_nodes"]
    gateways = re.findall(r"^\s+(\S+)$", plays["gateways"].split("hosts (3):")[1], re.MULTILINE)
    assert sorted(gateways) == ["rpi-campus-01", "rpi-harbour-01", "rpi-north-01"]
    assert "noc-01" in plays["monitor"]


def test_roles_per_group() -> None:
    plays = _list("--list-tasks")
    roles = {
        play: set(re.findall(r"^\s+(\w+) : ", text, re.MULTILINE)) for play, text in plays.items()
    }
    mesh_roles = {"base", "mesh_link", "batman_adv", "node_exporter", "chrony", "mesh_agent"}
    assert mesh_roles <= roles["mesh_nodes"]
    assert "etcd" in roles["gateways"]
    assert {"prometheus", "alertmanager", "grafana"} <= roles["monitor"]
    assert "etcd" not in roles["monitor"]
    assert "batman_adv" not in roles["monitor"]


def test_the_mesh_nodes_change_inside_a_maintenance_window() -> None:
    """Opened on every mesh node before the mesh node play and closed after the gateways
    (the loop records incidents, does not act: playbooks/tasks/maintenance.yml)."""
    order = [(pattern, name) for pattern, name, _ in _plays("--list-hosts")]
    opened = order.index(("mesh_nodes", "Open a maintenance window on the mesh nodes"))
    closed = order.index(("mesh_nodes", "Close the maintenance window on the mesh nodes"))
    assert opened < order.index(("mesh_nodes", "Mesh nodes")) < order.index(
        ("gateways", "Gateways")) < closed
