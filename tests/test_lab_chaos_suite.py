"""The default chaos suite on the container lab, as ``make chaos`` runs it.

``playbooks/chaos.yml`` (what ``make chaos`` runs; here with its output in a temporary
directory) installs the node side and its reaper on every lab node, then runs every
experiment under ``experiments/`` against the lab, with its steady state before and after.
Until session 47 every class aimed at the agent (frozen_agent, node_crash,
cpu_starvation) failed on the podman lab ("no process matching") and no test ran the
suite there, so nobody saw it. Here: the playbook succeeds, one journal per experiment,
each completed with the steady state holding after and no step skipped, and nothing of
the faults left on any node.

One exception, said and checked: ``cpu_starvation`` moves the agent into a cpu cgroup
with a quota, and podman mounts the cpu controller read-only in a container on a cgroup
v1 host (this machine). There its steps are refused by the node, and the journal must say
so ("Read-only file system"); on a Pi or a netns lab the class runs
(``tests/test_chaos_faults.py``).

Slow (``make test-full-lab``): on the session's 10-node lab, about 15 minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from meshcore_testkit.containerlab import chaos_nodes, on_node, running_lab_state
from meshcore_tools.chaos.nodes import leftovers

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("podman") is None,
                       reason="the lab needs root and podman"),
]


def test_the_default_suite_runs_clean_on_the_lab(lab: dict, tmp_path: Path) -> None:
    out = tmp_path / "chaos"
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "playbooks/chaos.yml",
         "-e", f"chaos_out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=3000,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
             "ANSIBLE_FORCE_COLOR": "0"}, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    nodes = sorted(running_lab_state()["nodes"])
    mounts = on_node(nodes[0], "cat /proc/mounts").splitlines()
    ro_cpu = any(f[1] == "/sys/fs/cgroup/cpu" and "ro" in f[3].split(",")
                 for f in (line.split() for line in mounts) if len(f) > 3)
    suite = {p.stem for p in (ROOT / "experiments").glob("*.yml")}
    journals = {p.name.removesuffix(".journal.json"): json.loads(p.read_text())
                for p in out.glob("*.journal.json")}
    assert set(journals) == suite
    for name, doc in sorted(journals.items()):
        assert doc["status"] == "completed", (name, doc["steady_states"]["before"])
        assert doc["deviated"] is False, (name, doc["steady_states"]["after"])
        steps = doc["measurements"]["steps"]
        skipped = [s for s in steps if s.get("skipped")]
        if name == "cpu_starvation" and ro_cpu:
            assert skipped == steps and all(
                "Read-only file system" in s["skipped"] for s in skipped), steps
            continue
        assert steps and not skipped, (name, steps)
    assert (out / "report.md").read_text().strip()
    assert leftovers(chaos_nodes(), nodes) == {}
