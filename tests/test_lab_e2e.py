"""The README's main job end to end: `make lab`, then idempotence, then destroy.

Slow (about 5 minutes for 10 nodes on 2 cores): runs under `make test-full`.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

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
