"""``meshctl fleet``: every node of an Ansible inventory in one table.

The inventory is read with ``ansible-inventory --list`` (the controller has
Ansible; a node does not need this command). Each node of the ``mesh_nodes``
group is asked on its management address (``mesh_mgmt_address``, else
``ansible_host``, else its name), where the role binds the API. A node that
does not answer counts as unhealthy. :func:`fleet_rows` and
:func:`fleet_summary` are pure, for the tests.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from typing import Any

from mesh_agent.ctl.render import duration
from mesh_agent.ctl.status import CERT_WARN_S, problems

FLEET_HEADERS = ("NODE", "HEALTHY", "READY", "MODE", "NEIGHBOURS", "ROUTES", "BACKUP",
                 "CERT EXPIRES IN", "VERSION", "PROBLEMS")


class InventoryError(Exception):
    pass


def inventory_nodes(inventory: str, group: str = "mesh_nodes") -> dict[str, str]:
    """``{node name: address to ask}`` for every host of *group* in *inventory*."""
    try:
        out = subprocess.run(["ansible-inventory", "-i", inventory, "--list"],
                             capture_output=True, text=True, check=True, timeout=120).stdout
    except FileNotFoundError:
        raise InventoryError("ansible-inventory not found: run meshctl fleet on the "
                             "controller (its venv has Ansible)") from None
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr.strip().splitlines() or ["failed"])[-1]
        raise InventoryError(f"ansible-inventory -i {inventory}: {last}") from None
    return nodes_of(json.loads(out), group)


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


def fleet_rows(results: Mapping[str, dict[str, Any] | str],
               cert_warn_s: float = CERT_WARN_S) -> list[dict[str, Any]]:
    """One row per node: its status summary, or the error string when it did not answer."""
    rows = []
    for name in sorted(results):
        r = results[name]
        if isinstance(r, str):
            rows.append({"node": name, "healthy": False, "reachable": False, "problems": [r]})
            continue
        found = problems(r, cert_warn_s)
        rows.append({
            "node": name, "healthy": not found, "reachable": True, "ready": r["ready"],
            "mode": r["mode"], "neighbors_up": len(r["neighbors_up"]),
            "destinations": r["destinations"], "with_backup": r["with_backup"],
            "cert_seconds_left": r["cert_seconds_left"], "version": r["version"],
            "problems": found,
        })
    return rows


def fleet_summary(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "nodes": len(rows),
        "healthy": sum(1 for r in rows if r["healthy"]),
        "unreachable": sum(1 for r in rows if not r["reachable"]),
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
