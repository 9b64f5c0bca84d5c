"""Summaries of an agent's answers, as plain data (no I/O): what ``status`` and ``fleet`` show.

:func:`summarise` takes the raw JSON of ``/v1/agent``, ``/readyz``,
``/v1/neighbors``, ``/v1/paths``, ``/v1/identity`` and the newest events, and
returns one dict; ``meshctl status`` prints it, ``meshctl --json status``
emits it and ``meshctl fleet`` puts one row per node from it.
"""

from __future__ import annotations

from typing import Any

from mesh_agent.ctl.render import duration

# A certificate closer than this to its expiry makes a node unhealthy (meshctl fleet
# --cert-warn): peers reject its adverts once it has expired. The lab CA issues for 30
# days; SPIRE's SVIDs live about an hour and are renewed at half-life, so a SPIRE
# fleet passes a shorter --cert-warn (10m).
CERT_WARN_S = 24 * 3600.0


def summarise(
    agent: dict[str, Any],
    ready: dict[str, Any],
    neighbors: dict[str, Any],
    paths: dict[str, Any],
    identity: dict[str, Any],
    events: dict[str, Any],
    now: float,
) -> dict[str, Any]:
    dests = paths.get("destinations", {})
    up = sorted(n["name"] for n in neighbors.get("neighbors", []) if n.get("state") == "up")
    not_after = identity["certificate"]["not_after"]
    return {
        "node": agent["node"],
        "version": agent["version"],
        "mode": agent["mode"],
        "link_backend": agent["link_backend"],
        "echo": bool(agent.get("echo")),
        "address": agent["address"],
        "ready": bool(ready.get("ready")),
        "checks": ready.get("checks", {}),
        "neighbors_up": up,
        "neighbors_other": sorted(
            f"{n['name']} ({n.get('state')})" for n in neighbors.get("neighbors", [])
            if n.get("state") != "up"),
        "destinations": len(dests),
        "with_backup": sum(1 for d in dests.values() if d.get("backup_next_hop")),
        "loop_free_backup": sum(1 for d in dests.values() if d.get("backup_loop_free")),
        "installed": sum(1 for d in dests.values() if d.get("installed")),
        "coverage": paths.get("coverage", {}),
        "last_failover": paths.get("last_failover"),
        "spiffe_id": identity["spiffe_id"],
        "identity_source": identity["source"],
        "cert_not_after": not_after,
        "cert_seconds_left": round(not_after - now, 1),
        "recent_events": events.get("events", []),
    }


def problems(status: dict[str, Any], cert_warn_s: float = CERT_WARN_S) -> list[str]:
    """Why a node is unhealthy, one short phrase each; empty when it is healthy."""
    out = [f"not ready: {name}" for name, ok in sorted(status["checks"].items()) if not ok]
    if not status["neighbors_up"]:
        out.append("no neighbour up")
    left = status["cert_seconds_left"]
    if left <= 0:
        out.append("certificate expired")
    elif left < cert_warn_s:
        out.append(f"certificate expires in {duration(left)}")
    return out
