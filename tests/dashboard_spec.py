"""What the tests know about the committed dashboard (roles/grafana/files/dashboards)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "roles" / "grafana" / "files" / "dashboards" / "mesh-core.json"
WAITING = re.compile(r"^Waiting for issue: (\w+)\.")
# The panels the seeds promise, by title prefix, and the ones that wait for a
# later issue's metric. Kept explicit here and in docs/monitoring.md: a panel joins or
# leaves the waiting list only by editing this table.
SEED_PANELS = (
    "MTTR p50/p95/p99", "Mesh latency", "Slot-sync success", "eBPF overhead",
    "k-disjoint path availability", "Self-healing events", "Topology changes", "Availability",
)
WAITING_PANELS = {
    "Slot-sync success": "slots",
    "eBPF overhead": "ebpf",
}
# Panels whose quantiles are NaN when no event happened in their window: they
# pass with NaN only if this query (the event count over the window) is 0.
NAN_WHEN_NO_EVENTS = {
    "Failover duration p50/p95/p99":
        'sum(increase(meshcore_failovers_total{job="mesh_agent"}[1h]))',
    "MTTR p50/p95/p99":
        'sum(increase(meshcore_mttr_seconds_count{job="mesh_agent"}[1h]))',
}


RULES = ROOT / "roles" / "prometheus" / "files" / "rules" / "meshcore.yml"
RECORDED = re.compile(r"((?:node:|meshcore:)[a-zA-Z0-9_:]+)(\{[^}]*\})?")


def expand_rules(expr: str) -> str:
    """Replace recording-rule names in *expr* by their expressions (recursively), to query a
    Prometheus that does not load the rules yet. A selector on a rule name picks among rules
    of that name by their static labels (the quantile rules)."""
    import yaml

    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
             if "record" in r]

    def sub(m: re.Match[str]) -> str:
        wanted = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        (rule,) = [r for r in rules if r["record"] == m.group(1)
                   and all(r.get("labels", {}).get(k) == v for k, v in wanted.items())]
        return "(" + expand_rules(" ".join(str(rule["expr"]).split())) + ")"

    return RECORDED.sub(sub, expr)


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    return list(load()["panels"])


def base_title(panel: dict[str, Any]) -> str:
    return str(panel["title"]).split(" (waiting: ")[0]


def waiting_for(panel: dict[str, Any]) -> str | None:
    m = WAITING.match(panel.get("description") or "")
    return m.group(1) if m else None
