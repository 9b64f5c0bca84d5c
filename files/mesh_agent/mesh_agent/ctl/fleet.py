"""``meshctl fleet``: every node of an Ansible inventory in one table.

The inventory is read with ``ansible-inventory --list`` (the controller has
Ansible; a node does not need this command). Each node of the ``mesh_nodes``
group is asked on its management address (``mesh_mgmt_address``, else
``ansible_host``, else its name), where the role binds the API; with ``--ssh``,
over ssh as Ansible reaches it (``ansible_host``, ``ansible_user``,
``ansible_port``). A node that does not answer counts as unhealthy.

Expected neighbours come from the inventory's links: a host's ``mesh_links``
(a list of ``{peer: <node name>, ...}``; the lab's generated inventory has one
per veth link). A node whose expected neighbour is not up is unhealthy and the
command names it. An inventory without ``mesh_links`` (the starter and example
sites: radio neighbours are not planned) expects nothing, and the check is
skipped. :func:`fleet_rows` and :func:`fleet_summary` are pure, for the tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh_agent.ctl.render import duration
from mesh_agent.ctl.status import CERT_WARN_S, problems

FLEET_HEADERS = ("NODE", "HEALTHY", "READY", "MODE", "NEIGHBOURS", "ROUTES", "BACKUP",
                 "CERT EXPIRES IN", "VERSION", "PROBLEMS")


class InventoryError(Exception):
    pass


@dataclass(frozen=True)
class FleetInventory:
    addresses: dict[str, str]  # node name -> address to ask
    # node name -> the neighbours its links expect; None: the inventory has no links
    expected: dict[str, list[str]] | None = None
    # node name -> ssh's arguments to reach it as Ansible does (ssh_targets)
    ssh: dict[str, list[str]] = field(default_factory=dict)


def ansible_inventory() -> str:
    """``ansible-inventory`` from PATH, else beside this Python (``.venv/bin/meshctl`` run
    without the venv activated: the venv that has meshctl has Ansible too)."""
    beside = Path(sys.executable).parent / "ansible-inventory"
    return shutil.which("ansible-inventory") or (str(beside) if beside.exists()
                                                 else "ansible-inventory")


def inventory_nodes(inventory: str, group: str = "mesh_nodes") -> FleetInventory:
    """The hosts of *group* in *inventory*: where to ask each, which neighbours to expect."""
    try:
        out = subprocess.run([ansible_inventory(), "-i", inventory, "--list"],
                             capture_output=True, text=True, check=True, timeout=120).stdout
    except FileNotFoundError:
        raise InventoryError("ansible-inventory not found: run meshctl fleet on the "
                             "controller (its venv has Ansible)") from None
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr.strip().splitlines() or ["failed"])[-1]
        raise InventoryError(f"ansible-inventory -i {inventory}: {last}") from None
    listing = json.loads(out)
    nodes = nodes_of(listing, group)
    return FleetInventory(nodes, expected_neighbours(listing, nodes), ssh_targets(listing, nodes))


def nodes_of(listing: Mapping[str, Any], group: str) -> dict[str, str]:
    """The hosts of *group* (and its children) from ``ansible-inventory --list`` output."""
    hostvars = listing.get("_meta", {}).get("hostvars", {})
    seen: list[str] = []

    def walk(name: str) -> None:
        g = listing.get(name, {})
        for h in g.get("hosts", []):
            if h not in seen:
                seen.append(h)
        for child in g.get("children", []):
            walk(child)

    walk(group)
    if not seen:
        raise InventoryError(f"the inventory has no host in group {group}")
    out = {}
    for h in sorted(seen):
        v = hostvars.get(h, {})
        out[h] = str(v.get("mesh_mgmt_address") or v.get("ansible_host") or h)
    return out


def ssh_targets(listing: Mapping[str, Any], nodes: Mapping[str, str]) -> dict[str, list[str]]:
    """Per node, ssh's arguments to reach it as Ansible does: ``-l ansible_user``,
    ``-p ansible_port`` when set, then ``ansible_host`` (else its name)."""
    hostvars = listing.get("_meta", {}).get("hostvars", {})
    out = {}
    for name in nodes:
        v = hostvars.get(name, {})
        user = v.get("ansible_user") or v.get("ansible_ssh_user")
        port = v.get("ansible_port") or v.get("ansible_ssh_port")
        out[name] = ([*(["-l", str(user)] if user else []), *(["-p", str(port)] if port else []),
                      str(v.get("ansible_host") or name)])
    return out


def expected_neighbours(listing: Mapping[str, Any],
                        nodes: Mapping[str, str]) -> dict[str, list[str]] | None:
    """``{node: [peer, ...]}`` from each node's ``mesh_links``; None when no node has links."""
    hostvars = listing.get("_meta", {}).get("hostvars", {})
    out = {}
    for name in nodes:
        links = hostvars.get(name, {}).get("mesh_links")
        if isinstance(links, list):
            out[name] = sorted({str(link["peer"]) for link in links
                                if isinstance(link, Mapping) and link.get("peer")})
    return out or None


def fleet_rows(results: Mapping[str, dict[str, Any] | str],
               cert_warn_s: float = CERT_WARN_S,
               expected: Mapping[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """One row per node: its status summary, or the error string when it did not answer.

    With *expected*, a node missing an expected neighbour (not up) is unhealthy and its
    row names them in ``expected_missing``."""
    rows = []
    for name in sorted(results):
        r = results[name]
        if isinstance(r, str):
            rows.append({"node": name, "healthy": False, "reachable": False, "problems": [r],
                         "expected_missing": []})
            continue
        found = problems(r, cert_warn_s)
        missing = sorted(set((expected or {}).get(name, [])) - set(r["neighbors_up"]))
        if missing:
            found.append("expected neighbours missing: " + ", ".join(missing))
        rows.append({
            "node": name, "healthy": not found, "reachable": True, "ready": r["ready"],
            "mode": r["mode"], "neighbors_up": len(r["neighbors_up"]),
            "destinations": r["destinations"], "with_backup": r["with_backup"],
            "cert_seconds_left": r["cert_seconds_left"], "version": r["version"],
            "problems": found, "expected_missing": missing,
        })
    return rows


def fleet_summary(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "nodes": len(rows),
        "healthy": sum(1 for r in rows if r["healthy"]),
        "unreachable": sum(1 for r in rows if not r["reachable"]),
        "missing_neighbours": sum(len(r["expected_missing"]) for r in rows),
    }


def fleet_table_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for r in rows:
        if not r["reachable"]:
            out.append([r["node"], "no", "-", "-", "-", "-", "-", "-", "-", r["problems"][0]])
            continue
        out.append([
            r["node"], "yes" if r["healthy"] else "no", "yes" if r["ready"] else "no", r["mode"],
            r["neighbors_up"], r["destinations"], f"{r['with_backup']}/{r['destinations']}",
            duration(r["cert_seconds_left"]), r["version"], "; ".join(r["problems"]) or "-",
        ])
    return out
