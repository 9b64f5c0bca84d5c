"""rollout.yml stages the release on every node before its first wave, a few nodes at a
time, and a stopped rollout discards the copies it staged on the nodes it never
reached. The plays and tasks are taken from playbooks/rollout.yml by name and run by
ansible-runner on local hosts (the mesh_agent role's own stage.yml underneath); the
staging of a real 4-node lab is tests/test_rollout_lab.py."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshcore_testkit.releases import (
    fake_bundle,
    keys_json,
    release_tarball,
    repack,
    throwaway_keys,
)
from meshcore_tools import ROOT
from meshcore_tools.rollout import TASKS, _time, build_report
from test_rollout_gate_tasks import run_play, wave_play

RID = "d" * 16
HOSTS = ["n1", "n2", "n3", "n4", "n5"]
ENV = {"ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_FORKS": "5"}


def stage_play() -> dict[str, Any]:
    plays = yaml.safe_load((ROOT / "playbooks/rollout.yml").read_text())
    (play,) = [p for p in plays if p["name"] == "Stage the release on every node"]
    return dict(play)


def tarball(tmp: Path, signers: int = 2) -> tuple[Path, Path]:
    keys = throwaway_keys()  # THROWAWAY test keys
    keys_file = tmp / "release-keys.json"
    keys_file.write_text(keys_json(keys))
    out = tmp / "release"
    out.mkdir(exist_ok=True)
    bundle = repack(fake_bundle(tmp, "0" * 16), "0" * 16, RID, "90.0.1", broken=False)
    return release_tarball(out, bundle, RID, "90.0.1", keys, signers=signers), keys_file


def run_stage(tmp: Path, tgz: Path, keys_file: Path, serial: int,
              extra_vars: dict[str, Any] | None = None, run: str = "run",
              host_vars: dict[str, str] | None = None) -> tuple[int, list[dict[str, Any]]]:
    play = stage_play()
    assert "rollout_stage_serial" in yaml.safe_load(
        (ROOT / "playbooks/vars/rollout.yml").read_text())
    play.pop("vars_files")  # its serial would win over the test's (vars_files > play vars)
    play["vars"] = {"rollout_stage_serial": serial,
                    "rollout_release_tarball": str(tgz),
                    "mesh_agent_release_keys_file": str(keys_file),
                    "mesh_agent_release_verifier": str(Path(sys.executable).parent /
                                                       "meshcore-release"),
                    "mesh_agent_release_staging_dir": f"{tmp}/{{{{ inventory_hostname }}}}/staging",
                    **(extra_vars or {})}
    (tmp / run).mkdir()
    return run_play(tmp / run, [play], HOSTS, ENV, host_vars=host_vars)


def staged(tmp: Path, host: str) -> bool:
    return (tmp / host / "staging/mesh-core-v90.0.1/manifest.json").is_file()


def times(events: list[dict[str, Any]], kind: str, task: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for e in events:
        data = e.get("event_data") or {}
        if e.get("event") == kind and data.get("task") == task:
            t = _time(e)
            assert t is not None
            out[str(data["host"])] = t
    return out


def test_every_node_is_staged_a_few_at_a_time_and_once(tmp_path: Path) -> None:
    tgz, keys_file = tarball(tmp_path)
    rc, events = run_stage(tmp_path, tgz, keys_file, serial=2)
    assert rc == 0, [e["event_data"].get("res", {}).get("msg") for e in events
                     if e.get("event") == "runner_on_failed"]
    assert all(staged(tmp_path, h) for h in HOSTS)
    # nothing under an install root, config or unit: only the staging directory
    assert sorted(p.name for p in (tmp_path / "n1").iterdir()) == ["staging"]
    # batches of 2: a batch copies only after the previous one checked its copies
    copied = times(events, "runner_on_start", "Copy the release tarball to the node")
    done = times(events, "runner_on_ok", TASKS["staged"])
    batches = [HOSTS[i:i + 2] for i in range(0, len(HOSTS), 2)]
    for before, after in itertools.pairwise(batches):
        assert min(copied[h] for h in after) >= max(done[h] for h in before), (copied, done)
    report = build_report(events, HOSTS)
    assert report["stage"]["hosts"] == 5 and report["stage"]["duration_s"] is not None
    assert all(report["hosts"][h]["staged"] for h in HOSTS)
    assert all(report["hosts"][h]["status"] == "not_reached" for h in HOSTS)
    # the waves' verified install skips its own staging for this tarball, and a copy this
    # run unpacked is marked new (a stopped rollout discards it)
    noted = [e["event_data"]["res"]["ansible_facts"] for e in events
             if e.get("event") == "runner_on_ok"
             and e["event_data"].get("task") == "Note the tarball staged on this node in this run"]
    assert len(noted) == 5
    assert all(f["mesh_agent_release_staged_tarball"] == str(tgz) for f in noted)
    assert all(f["mesh_agent_release_staged_new"] is True for f in noted)
    verified = yaml.safe_load((ROOT / "roles/mesh_agent/tasks/verified.yml").read_text())
    (include,) = [t for t in verified if t.get("ansible.builtin.include_tasks") == "stage.yml"]
    assert "mesh_agent_release_staged_tarball" in include["when"]

    rc, events = run_stage(tmp_path, tgz, keys_file, serial=2, run="again")
    assert rc == 0
    assert not times(events, "runner_on_ok", "Copy the release tarball to the node")
    noted = [e["event_data"]["res"]["ansible_facts"] for e in events
             if e.get("event") == "runner_on_ok"
             and e["event_data"].get("task") == "Note the tarball staged on this node in this run"]
    assert [f["mesh_agent_release_staged_new"] for f in noted] == [False] * 5


def test_a_refused_release_stops_in_the_first_batch_before_any_wave(tmp_path: Path) -> None:
    tgz, keys_file = tarball(tmp_path, signers=1)
    rc, events = run_stage(tmp_path, tgz, keys_file, serial=2)
    assert rc != 0
    assert not any(staged(tmp_path, h) for h in HOSTS)
    report = build_report(events, HOSTS)
    assert report["status"] == "failed" and not report["waves"]
    msgs = [t["msg"] for h in ("n1", "n2") for t in report["hosts"][h]["failed_tasks"]]
    assert msgs and all("too_few_signatures" in m for m in msgs), msgs
    # the later batches never ran a task
    assert all(report["hosts"][h]["failed_tasks"] == [] and report["hosts"][h]["staged"] is None
               for h in ("n3", "n4", "n5"))


def test_an_unreachable_node_stops_the_rollout_before_any_wave(tmp_path: Path) -> None:
    tgz, keys_file = tarball(tmp_path)
    # n2 is reached over ssh on a closed port: unreachable
    rc, events = run_stage(tmp_path, tgz, keys_file, serial=2, host_vars={
        "n2": "ansible_connection=ssh ansible_host=127.0.0.1 ansible_port=1"})
    assert rc != 0
    assert staged(tmp_path, "n1") and not any(staged(tmp_path, h) for h in HOSTS[1:])
    report = build_report(events, HOSTS)
    assert report["status"] == "failed" and not report["waves"]
    assert report["hosts"]["n2"]["status"] == "unreachable"
    assert any("is unreachable or did not stage the release" in t["msg"]
               for t in report["hosts"]["n2"]["failed_tasks"]), report["hosts"]["n2"]


@pytest.mark.parametrize("verdict_ok", [False, True])
def test_a_stopped_rollout_discards_only_the_copies_it_staged_where_it_never_got(
        tmp_path: Path, verdict_ok: bool) -> None:
    # n1 is the failed wave; n2 finished an earlier wave; n3 and n5 were staged by this
    # rollout and never reached; n4 had the copy before the rollout
    facts = {"n1": {"mesh_agent_release_staged_new": True},
             "n2": {"mesh_agent_release_staged_new": True, "rollout_done": "r2"},
             "n3": {"mesh_agent_release_staged_new": True},
             "n4": {"mesh_agent_release_staged_new": False},
             "n5": {"mesh_agent_release_staged_new": True}}
    for h in HOSTS:
        copy = tmp_path / h / "staging/mesh-core-v90.0.1"
        copy.mkdir(parents=True)
        (copy / "manifest.json").write_text("{}")
        (copy.parent / "mesh-core-v90.0.1.sigs").write_text("{}")
    by_name = {t["name"]: t for t in wave_play()["tasks"]}
    setup = {"name": "staged", "hosts": "mesh_nodes", "gather_facts": False,
             "vars": {"rollout_fake": facts},
             "tasks": [{"name": "Fake what the staging play left", "ansible.builtin.set_fact": {
                 "mesh_agent_release_staged":
                     f"{tmp_path}/{{{{ inventory_hostname }}}}/staging/mesh-core-v90.0.1"}},
                       {"name": "Fake the flags", "ansible.builtin.set_fact": {
                           k: f"{{{{ rollout_fake[inventory_hostname].{k} }}}}"
                           for k in ("mesh_agent_release_staged_new",)}},
                       {"name": "Fake a done node", "ansible.builtin.set_fact": {
                           "rollout_done": "r2"}, "when": "inventory_hostname == 'n2'"}]}
    waves = {"name": "waves", "hosts": "mesh_nodes", "gather_facts": False, "serial": 1,
             "max_fail_percentage": 0,
             "vars": {"rollout_verdict": {"ok": verdict_ok, "failures": ["a test"]}},
             "tasks": [{"name": "Record the wave", "ansible.builtin.set_fact": {
                 "rollout_wave": "{{ ansible_play_batch }}"}},
                       by_name[TASKS["discard"]], by_name[TASKS["stop"]]]}
    rc, events = run_play(tmp_path, [setup, waves], HOSTS, ENV)
    left = {h for h in HOSTS if (tmp_path / h / "staging/mesh-core-v90.0.1").exists()}
    sigs = {h for h in HOSTS if (tmp_path / h / "staging/mesh-core-v90.0.1.sigs").exists()}
    if verdict_ok:
        assert rc == 0 and left == sigs == set(HOSTS)
        return
    assert rc != 0
    assert left == sigs == {"n1", "n2", "n4"}
    report = build_report(events, HOSTS)
    assert {h for h in HOSTS if report["hosts"][h]["unstaged"]} == {"n3", "n5"}


def test_the_waves_install_a_few_nodes_at_a_time(tmp_path: Path) -> None:
    """The node-side install (verified.yml's task, by name) with the throttle rollout.yml
    gives it: 5 nodes, throttle 2, a stand-in meshctl that logs when it ran: never more
    than 2 at once, and every node installed."""
    log = tmp_path / "installs.log"
    for h in HOSTS:
        meshctl = tmp_path / h / "current/bin/meshctl"
        meshctl.parent.mkdir(parents=True)
        meshctl.write_text(f"#!{sys.executable}\nimport json, time\n"
                           "t0 = time.time(); time.sleep(1.0)\n"
                           f"with open({str(log)!r}, 'a') as f:\n"
                           f"    f.write(json.dumps([{h!r}, t0, time.time()]) + '\\n')\n"
                           "print(json.dumps({'already': False}))\n")
        meshctl.chmod(0o755)
    tasks = {t["name"]: t for t in yaml.safe_load(
        (ROOT / "roles/mesh_agent/tasks/verified.yml").read_text())}
    (include,) = [t for t in wave_play()["tasks"]
                  if t["name"] == "Verify and install the release beside the live one"]
    throttle = include["vars"]["mesh_agent_release_install_throttle"]
    assert throttle == "{{ rollout_install_throttle }}"
    assert yaml.safe_load((ROOT / "playbooks/vars/rollout.yml").read_text())[
        "rollout_install_throttle"] >= 1
    play = {"name": "install", "hosts": "mesh_nodes", "gather_facts": False,
            "vars": {"mesh_agent_release_install_throttle": 2,
                     "mesh_agent_install_root": f"{tmp_path}/{{{{ inventory_hostname }}}}",
                     "mesh_agent_release_priority": [],
                     "mesh_agent_release_staged": "/nonexistent",
                     "mesh_agent_state_dir": "/nonexistent",
                     "mesh_agent_release_allow_downgrade": False,
                     "mesh_agent_release_node_verifier": {"rc": 0}},
            "tasks": [tasks["Verify and install the release on the node"]]}
    rc, _ = run_play(tmp_path, [play], HOSTS, ENV)
    assert rc == 0
    ran = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(h for h, _, _ in ran) == HOSTS
    edges = sorted([(t0, 1) for _, t0, _ in ran] + [(t1, -1) for _, _, t1 in ran])
    most = running = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    assert most == 2, ran
