"""The README's main job end to end: `make lab`, then idempotence, an alert through the
monitor's Alertmanager to the lab receiver, then destroy.

Slow (about 5 minutes for 10 nodes on 2 cores): runs under `make test-full`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from meshcore_tools.lab import monitor, prometheus
from meshcore_tools.lab.state import MONITOR, container, load_state

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
        out = subprocess.run(["podman", "exec", container(MONITOR), "cat",
                              "/var/lib/meshcore-alert-sink/alerts.jsonl"],
                             capture_output=True, text=True).stdout
        got = [a for line in out.splitlines() for a in json.loads(line)["alerts"]
               if a["labels"].get("node") == marker]
        if got or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert got and got[0]["status"] == "firing", out[-2000:]
