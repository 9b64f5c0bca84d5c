"""The Grafana dashboard: generated from files/grafana/dashboard.py, not stale, and sound."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml
from dashboard_spec import (
    DASHBOARD,
    NAN_WHEN_NO_EVENTS,
    ROOT,
    SEED_PANELS,
    WAITING_PANELS,
    base_title,
    load,
    panels,
    waiting_for,
)
from mesh_agent.metrics import Metrics

GENERATOR = ROOT / "files" / "grafana" / "dashboard.py"
RULES = ROOT / "roles" / "prometheus" / "files" / "rules" / "meshcore.yml"
NAME = re.compile(r"(?<![\w:\"])([a-zA-Z_][a-zA-Z0-9_]*:[a-zA-Z0-9_:]+|meshcore_[a-zA-Z0-9_]+)")


def agent_series() -> set[str]:
    """Every series name the agent exports (histograms with their suffixes)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names |= {s.name for s in family.samples} | {family.name}
        if family.type == "histogram":
            names |= {f"{family.name}_{x}" for x in ("bucket", "sum", "count")}
    return names


def recorded() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


def test_committed_json_is_what_the_generator_writes() -> None:
    res = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True,
                         text=True, cwd=ROOT)
    assert res.returncode == 0, f"{DASHBOARD} is stale:\n{res.stdout[-3000:]}{res.stderr}"


def test_dashboard_has_the_seed_panels() -> None:
    board = load()
    assert board["uid"] == "mesh-core"
    titles = [base_title(p) for p in panels()]
    assert len(titles) >= 10
    assert len(set(titles)) == len(titles)
    assert set(SEED_PANELS) <= set(titles)
    assert set(NAN_WHEN_NO_EVENTS) <= set(titles)
    for p in panels():
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "meshcore-prometheus"}


def test_waiting_panels_are_exactly_the_listed_ones() -> None:
    marked = {base_title(p): waiting_for(p) for p in panels() if waiting_for(p)}
    assert marked == WAITING_PANELS
    for p in panels():
        if waiting_for(p):
            assert p["title"].endswith(f"(waiting: {waiting_for(p)})")


def test_every_query_names_series_that_exist_or_honestly_wait() -> None:
    """A live panel reads agent metrics or recording rules; a waiting one reads none yet."""
    known = agent_series() | recorded()
    for p in panels():
        names = {n for t in p["targets"] for n in NAME.findall(t["expr"])}
        ours = {n for n in names if n.startswith("meshcore") or ":" in n}
        assert ours, f"{p['title']}: no meshcore series or recording rule in its queries"
        missing = ours - known
        if waiting_for(p):
            assert missing, f"{p['title']}: its metric exists now; drop the waiting marker"
        else:
            assert not missing, f"{p['title']}: {sorted(missing)} exported by no agent or rule"


def test_rule_expansion_matches_the_rules() -> None:
    """MESHCORE_EXPAND_RULES (test_dashboard_lab) inlines rules, nested and by quantile label."""
    from dashboard_spec import expand_rules

    out = expand_rules('meshcore:failover_duration_seconds:quantile_rate1h{quantile="0.95"}')
    assert out.startswith("(histogram_quantile(0.95, ") and ":" not in out.replace("[1h]", "")
    nested = expand_rules("node:meshcore_reachability:ratio")
    assert 'count(up{job="mesh_agent"} == 1)' in nested and "meshcore:" not in nested
    assert expand_rules('avg(meshcore_link_rtt_seconds{job="mesh_agent"})') == \
        'avg(meshcore_link_rtt_seconds{job="mesh_agent"})'
