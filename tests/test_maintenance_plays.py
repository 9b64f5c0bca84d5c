"""site.yml's and rollout.yml's maintenance-window plays (playbooks/tasks/maintenance.yml),
taken from the playbooks by name and run by ansible-runner on local hosts, each with a
stand-in meshctl that records what it was asked: the window is opened with the
configured length and reason and closed, an old release's meshctl (no such command) and
a node without an agent are passed over, and a meshctl that fails is reported, never
fatal. The real command on a real node: molecule mesh_agent; the loop's side:
files/mesh_agent/tests/test_mapek_maintenance.py and test_mapek_agent.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from meshcore_tools import ROOT
from test_rollout_gate_tasks import run_play

HOSTS = ["n1", "n2", "n3", "n4"]
FAKE = """#!/bin/sh
printf '%s\\n' "$*" >> "{log}"
case "{mode}" in
  ok) echo '{{"open": true}}' ;;
  old) echo "meshctl: error: argument COMMAND: invalid choice: 'maintenance'" >&2; exit 2 ;;
  broken) echo "meshctl: cannot write the window into /var/lib/mesh-agent" >&2; exit 1 ;;
esac
"""


def plays(playbook: str, names: list[str]) -> list[dict[str, Any]]:
    found = {p["name"]: p for p in yaml.safe_load((ROOT / playbook).read_text())}
    out = []
    for name in names:
        play = dict(found[name])
        play["hosts"] = "mesh_nodes"
        play.pop("vars_files")
        # The playbook's defaults, less the two each host sets (play vars would win).
        defaults = yaml.safe_load((ROOT / "playbooks/vars/rollout.yml").read_text())
        assert defaults["mesh_maintenance_window_s"] == 3600
        play["vars"] = {**{k: v for k, v in defaults.items()
                           if k not in ("mesh_maintenance_meshctl", "mesh_maintenance_window_s")},
                        "rollout_release_tarball": "/tmp/mesh-core-v9.9.9.tgz"}
        out.append(play)
    return out


def run(tmp_path: Path, playbook: str, names: list[str], window_s: int = 3600
        ) -> tuple[int, list[dict[str, Any]], dict[str, list[str]]]:
    host_vars = {}
    for host, mode in zip(HOSTS, ["ok", "old", "absent", "broken"], strict=True):
        meshctl = tmp_path / f"meshctl-{host}"
        if mode != "absent":
            meshctl.write_text(FAKE.format(log=tmp_path / f"{host}.log", mode=mode))
            meshctl.chmod(0o755)
        host_vars[host] = f"mesh_maintenance_meshctl={meshctl} mesh_maintenance_window_s={window_s}"
    rc, events = run_play(tmp_path, plays(playbook, names), HOSTS, host_vars=host_vars)
    calls = {h: (tmp_path / f"{h}.log").read_text().splitlines()
             for h in HOSTS if (tmp_path / f"{h}.log").exists()}
    return rc, events, calls


def warnings(events: list[dict[str, Any]]) -> dict[str, str]:
    return {e["event_data"]["host"]: e["event_data"]["res"]["msg"] for e in events
            if e.get("event") == "runner_on_ok"
            and "say why" in (e["event_data"].get("task") or "")}


def test_site_opens_and_closes_the_window_and_never_fails_a_node(tmp_path: Path) -> None:
    rc, events, calls = run(tmp_path, "playbooks/site.yml",
                            ["Open a maintenance window on the mesh nodes",
                             "Close the maintenance window on the mesh nodes"])
    assert rc == 0
    assert calls["n1"] == ["--json maintenance start --for 3600 --reason site.yml",
                           "--json maintenance end"]
    assert calls["n2"] == ["--json maintenance start --for 3600 --reason site.yml",
                           "--json maintenance end"]  # an old meshctl: passed over quietly
    assert "n3" not in calls  # no agent installed yet
    said = warnings(events)
    assert set(said) == {"n4"}, said  # a failure is said, twice, and fails nothing
    assert "No maintenance window opened on n4 (rc 1)" in said["n4"] or \
        "No maintenance window closed on n4 (rc 1)" in said["n4"]
    assert not [e for e in events if e.get("event") == "runner_on_failed"
                and not e["event_data"].get("ignore_errors")]


def test_rollout_names_the_release_and_zero_opens_none(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    rc, _, calls = run(tmp_path / "a", "playbooks/rollout.yml",
                       ["Open a maintenance window on every node"])
    assert rc == 0 and calls["n1"] == [
        "--json maintenance start --for 3600 --reason rollout mesh-core-v9.9.9.tgz"]
    (tmp_path / "b").mkdir()
    rc, _, calls = run(tmp_path / "b", "playbooks/rollout.yml",
                       ["Open a maintenance window on every node",
                        "Close the maintenance window on every node"], window_s=0)
    assert rc == 0 and calls == {}


def test_a_failed_gate_closes_the_window_on_every_node() -> None:
    """The wave play's own close, before it stops: on every host of the play, delegated,
    so the nodes the rollout never reached are left as they were."""
    wave = next(p for p in yaml.safe_load((ROOT / "playbooks/rollout.yml").read_text())
                if p["name"] == "Roll out an agent release")
    names = [t["name"] for t in wave["tasks"]]
    close = wave["tasks"][names.index("Close the maintenance window on every node")]
    assert names.index("Close the maintenance window on every node") < names.index(
        "Stop the rollout when the gate failed")
    assert close["loop"] == "{{ ansible_play_hosts_all }}" and close["run_once"]
    assert close["when"] == "not rollout_verdict.ok"
    assert json.dumps(close["ansible.builtin.command"]["argv"][1:]) == json.dumps(
        ["--json", "maintenance", "end"])
