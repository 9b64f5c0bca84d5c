"""The README's main job end to end: `make lab`, then idempotence, an alert through the
monitor's Alertmanager to the lab receiver, a config change that restarts the running
agents in rounds, then destroy.

Slow (about 5 minutes for 10 nodes on 2 cores): runs under `make test-full`.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from meshcore_testkit.containerlab import current, exec_in
from meshcore_testkit.containerlab import site_run as lab_site_run
from meshcore_tools.lab import monitor, prometheus
from meshcore_tools.lab.state import MONITOR, load_state

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (podman, netns)"),
]


def test_every_neighbour_service_and_scrape_is_up(lab: dict[str, object]) -> None:
    rows = lab["nodes"]
    assert len(rows) == 11
    for r in rows:
        assert r["neighbours_pingable"] == r["neighbours_total"], r
        assert all(v == "active" for v in r["services"].values()), r
        assert r["scrape"] and all(v == "up" for v in r["scrape"].values()), r


def test_every_node_reaches_every_other_over_agent_routes(lab: dict[str, object]) -> None:
    mesh = [r for r in lab["nodes"] if "reachable" in r]
    assert len(mesh) == 10
    for r in mesh:
        assert len(r["reachable"]) == 9, r


def test_second_site_run_changes_nothing(lab: dict[str, object]) -> None:
    res = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", "inventories/lab",
         "playbooks/site.yml"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0"},
    )
    assert res.returncode == 0, res.stdout[-4000:]
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", res.stdout, re.M)
    # The lab's 11 hosts, plus localhost (the site-config check runs there first).
    assert len(recap) == 12 and "localhost" in dict(recap), recap
    assert all(changed == "0" for _, changed in recap), recap


def test_an_alert_reaches_the_lab_receiver(lab: dict[str, object]) -> None:
    """Prometheus knows the monitor's Alertmanager, and an alert posted to it lands in the
    lab sink's file on the monitor (the lab receiver of roles/alertmanager)."""
    state = load_state()
    urls = {s.name: s.url for s in monitor.services(state)}
    active = prometheus.api(urls["Prometheus"], "alertmanagers")["activeAlertmanagers"]
    assert [a["url"] for a in active] == ["http://127.0.0.1:9093/api/v2/alerts"]
    marker = f"e2e-{time.time_ns()}"
    alert = [{"labels": {"alertname": "MeshCoreLabE2E", "node": marker, "severity": "none"},
              "annotations": {"summary": "posted by tests/test_lab_e2e.py"}}]
    req = urllib.request.Request(f"{urls['Alertmanager']}/api/v2/alerts",
                                 data=json.dumps(alert).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).close()
    deadline = time.monotonic() + 120  # group_wait 30 s, then the webhook
    while True:
        out = exec_in(MONITOR, "cat", "/var/lib/meshcore-alert-sink/alerts.jsonl").stdout
        got = [a for line in out.splitlines() for a in json.loads(line)["alerts"]
               if a["labels"].get("node") == marker]
        if got or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert got and got[0]["status"] == "firing", out[-2000:]


def site_run(extravars: dict[str, Any], tmp: Path) -> tuple[int, list[dict[str, Any]]]:
    """site.yml on the lab's mesh nodes in one batch (meshcore_testkit's site_run)."""
    return lab_site_run({"mesh_node_serial": ["100%"], **extravars}, tmp)


def test_a_config_change_restarts_the_running_agents_in_rounds(
        lab: dict[str, object], tmp_path: Path) -> None:
    """A changed agent config, all 10 nodes in one batch: each running agent restarts once,
    in rounds where no two nodes are neighbours (the lab's own graph), a round only after
    the one before it is ready; then the change is undone the same way."""
    state = load_state()
    adjacent = {frozenset((link["a"], link["b"])) for link in state["links"]}
    mesh = sorted(state["nodes"])
    for grace in (31, 30):  # the role's default is 30: the second run puts it back
        rc, events = site_run({"mesh_agent_restart_grace_s": grace}, tmp_path / str(grace))
        assert rc == 0, [e.get("stdout") for e in events][-20:]
        oks = [e["event_data"] for e in events if e.get("event") == "runner_on_ok"]
        (rounds,) = {json.dumps(d["res"]["ansible_facts"]["mesh_node_restart_rounds"])
                     for d in oks if d.get("task") == "Plan the agent restart rounds"}
        planned: list[list[str]] = json.loads(rounds)
        assert sorted(h for r in planned for h in r) == mesh, planned  # every agent, once
        assert 1 < len(planned) < len(mesh), planned  # neither all at once nor one by one
        assert not any(frozenset((a, b)) in adjacent for r in planned for a in r for b in r)
        span: dict[str, tuple[float, float]] = {}
        for d in oks:
            if d.get("task") in ("Restart the agent, one round at a time",
                                 "Wait for the restarted agent's /readyz"):
                t0, t1 = (datetime.fromisoformat(str(d[k])).timestamp()
                          for k in ("start", "end"))
                h = str(d["host"])
                span[h] = (min(span.get(h, (t0, t1))[0], t0), max(span.get(h, (t0, t1))[1], t1))
        assert sorted(span) == mesh, span
        # The rounds run one after another, though not in the plan's order: Ansible runs
        # the included rounds in the order their first host (in batch order) reaches them.
        for a, b in itertools.combinations(planned, 2):
            a0, a1 = min(span[h][0] for h in a), max(span[h][1] for h in a)
            b0, b1 = min(span[h][0] for h in b), max(span[h][1] for h in b)
            assert a1 <= b0 or b1 <= a0, (a, b, span)


def test_a_signed_release_switches_the_running_agents_in_rounds(
        lab: dict[str, object], tmp_path: Path) -> None:
    """site.yml with a signed release (throwaway keys) on the running lab, all 10 nodes in
    one batch: every node switches with ``meshctl release use --wait-ready`` in rounds of
    nodes that are not neighbours, one round after another; a second run switches nothing.
    Then every node is put back on the lab's own release (as a rollback would)."""
    from meshcore_testkit.releases import keys_json, release_tarball, repack, throwaway_keys

    state = load_state()
    adjacent = {frozenset((link["a"], link["b"])) for link in state["links"]}
    mesh = sorted(state["nodes"])
    info = json.loads((ROOT / "build/agent/bundle.json").read_text())
    src, old, new = ROOT / "build/agent" / info["bundle"], info["release"], "e" * 16
    keys = throwaway_keys()  # THROWAWAY test keys
    keys_file = tmp_path / "release-keys.json"
    keys_file.write_text(keys_json(keys))
    tarball = release_tarball(tmp_path, repack(src, old, new, "90.0.5", broken=False), new,
                              "90.0.5", keys)
    extra = {"mesh_agent_release_keys_file": str(keys_file),
             "mesh_agent_release_tarball": str(tarball)}
    switch = "Switch to the release, one round at a time"  # tasks/release-use.yml

    try:
        rc, events = site_run(extra, tmp_path / "switch")
        assert rc == 0, [e.get("stdout") for e in events][-20:]
        oks = [e["event_data"] for e in events if e.get("event") == "runner_on_ok"]
        assert not [d for d in oks if d.get("task") == "Switch to the verified release"]
        (rounds,) = {json.dumps(d["res"]["ansible_facts"]["mesh_node_restart_rounds"])
                     for d in oks if d.get("task") == "Plan the agent restart rounds"}
        planned: list[list[str]] = json.loads(rounds)
        assert sorted(h for r in planned for h in r) == mesh, planned
        assert not any(frozenset((a, b)) in adjacent for r in planned for a in r for b in r)
        span = {str(d["host"]): tuple(datetime.fromisoformat(str(d[k])).timestamp()
                                      for k in ("start", "end"))
                for d in oks if d.get("task") == switch}
        assert sorted(span) == mesh, span
        assert all(json.loads(d["res"]["stdout"])["current"] == new
                   for d in oks if d.get("task") == switch)
        for a, b in itertools.combinations(planned, 2):
            a0, a1 = min(span[h][0] for h in a), max(span[h][1] for h in a)
            b0, b1 = min(span[h][0] for h in b), max(span[h][1] for h in b)
            assert a1 <= b0 or b1 <= a0, (a, b, span)
        assert all(current(n) == new for n in mesh)

        rc, events = site_run(extra, tmp_path / "again")
        assert rc == 0
        assert not [e for e in events if e.get("event") == "runner_on_ok"
                    and e["event_data"].get("task") == switch]
    finally:
        for n in mesh:
            exec_in(n, "meshctl", "--json", "release", "use", old, "--no-confirm",
                    "--wait-ready", "60")
    assert all(current(n) == old for n in mesh)
