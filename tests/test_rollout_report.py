"""The rollout report (tools/meshcore_tools/rollout.py) and the gate filter
(plugins/filter/meshcore_rollout.py), without a mesh.

The report is built from ansible-runner events: a synthetic list shaped like
runner's, and a real event stream recorded by running, through ansible-runner, a
stand-in playbook on local hosts that uses rollout.yml's task names with trivial
actions (a canary that passes, a wave whose gate fails and is rolled back, one
host unreachable)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshcore_testkit.loader import load_path
from meshcore_tools import ROOT
from meshcore_tools.playbook import runner_path
from meshcore_tools.rollout import TASKS, build_report, inventory_hosts
from test_rollout_gate_tasks import wave_play

gate_mod = load_path("meshcore_rollout", ROOT / "plugins/filter/meshcore_rollout.py")
gate = gate_mod.meshcore_rollout_gate
counters = gate_mod.meshcore_rollout_counters


def test_every_task_the_report_reads_is_in_the_playbook() -> None:
    plays = yaml.safe_load((ROOT / "playbooks/rollout.yml").read_text())
    names = {t["name"] for play in plays for t in play.get("tasks", [])}
    # and the tasks of the files it includes (its rounds')
    included = {t["ansible.builtin.include_tasks"]["file"] for play in plays
                for t in play.get("tasks", []) if "ansible.builtin.include_tasks" in t}
    assert "tasks/release-use.yml" in included
    for f in included:
        names |= {t["name"] for t in yaml.safe_load((ROOT / "playbooks" / f).read_text())}
    assert set(TASKS.values()) <= names, set(TASKS.values()) - names


# -- the gate ---------------------------------------------------------------------

METRICS = """# HELP meshcore_failovers_total Local switches to a prepared backup
# TYPE meshcore_failovers_total counter
meshcore_failovers_total 3.0
meshcore_adverts_rejected_total{reason="signature"} 1.0
meshcore_adverts_rejected_total{reason="stale"} 2.0
meshcore_adverts_rejected_created{reason="stale"} 1.7e9
"""


def test_counters_sum_over_labels() -> None:
    assert counters(METRICS) == {"failovers": 3.0, "adverts_rejected": 3.0}
    assert counters("") == {"failovers": 0.0, "adverts_rejected": 0.0}
    assert counters(None) == {"failovers": 0.0, "adverts_rejected": 0.0}


def sample(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"readyz": {"status": 200, "json": {"ready": True}},
                            "release": "r2", "target": "r2", "confirm": {"last": None},
                            "metrics_before": METRICS, "metrics_after": METRICS}
    base.update(kw)
    return base


def paths_for(hosts: list[str], missing: dict[str, str] | None = None) -> dict[str, Any]:
    missing = missing or {}
    return {h: {"destinations": {o: {} for o in hosts if o != h and missing.get(h) != o}}
            for h in hosts}


ALL = ["n1", "n2", "n3", "n4"]


def test_a_healthy_wave_passes() -> None:
    v = gate({"n1": sample()}, ["n1"], ["n1"], ALL, {}, {}, paths_for(ALL))
    assert v == {"ok": True, "failures": [], "hosts": {"n1": {"ok": True, "problems": []}},
                 "alerts_checked": False, "alerts": {}, "probes_checked": 0}


@pytest.mark.parametrize("s, needle", [
    (sample(readyz={"status": 503, "json": {"failing": ["paths_current"]}}),
     "not ready (paths_current)"),
    (sample(readyz={}), "not ready (HTTP no answer)"),
    (sample(release="r1"), "runs release r1, not r2"),
    (sample(confirm={"last": {"release": "r2", "outcome": "reverted", "reason": "late"}}),
     "reverted itself: late"),
    (sample(metrics_after=METRICS.replace("failovers_total 3.0", "failovers_total 9.0")),
     "failovers grew by 6 during the soak (bound 2)"),
    (sample(metrics_after=METRICS.replace('"stale"} 2.0', '"stale"} 5.0')),
     "adverts_rejected grew by 3 during the soak (bound 0): stale 3"),
    (sample(metrics_after=METRICS.replace('"stale"} 2.0', '"stale"} 5.0').replace(
        '"signature"} 1.0', '"signature"} 2.0')
        + 'meshcore_adverts_rejected_total{reason="replayed"} 1.0\n'),
     "adverts_rejected grew by 5 during the soak (bound 0): stale 3, replayed 1, signature 1"),
])
def test_a_wave_node_fails_the_gate(s: dict[str, Any], needle: str) -> None:
    v = gate({"n1": s}, ["n1"], ["n1"], ALL, {"failovers": 2}, {}, paths_for(ALL))
    assert not v["ok"] and v["failures"] == [f"n1: {needle}"]


def test_a_counter_reset_by_a_restart_counts_from_zero() -> None:
    after = METRICS.replace("failovers_total 3.0", "failovers_total 1.0")
    v = gate({"n1": sample(metrics_after=after)}, ["n1"], ["n1"], ALL, {"failovers": 0}, {},
             paths_for(ALL))
    assert v["failures"] == ["n1: failovers grew by 1 during the soak (bound 0)"]


def test_an_unreachable_wave_host_fails_the_wave() -> None:
    v = gate({"n1": sample()}, ["n1", "n2"], ["n1"], ALL, {}, {}, paths_for(ALL))
    assert v["failures"] == ["n2: unreachable or failed during the wave"]
    assert v["hosts"]["n1"]["ok"] and not v["hosts"]["n2"]["ok"]


def test_all_pairs_from_every_node_including_those_outside_the_wave() -> None:
    paths = paths_for(ALL, missing={"n4": "n2"})
    del paths["n3"]
    v = gate({"n1": sample()}, ["n1"], ["n1"], ALL, {}, {}, paths)
    assert v["failures"] == ["n3: no path table (the agent's /v1/paths did not answer)",
                             "n4: no path to n2"]


def test_node_names_that_are_not_inventory_names() -> None:
    names = {h: f"node-{h}" for h in ALL}
    paths: dict[str, Any] = {h: {"destinations": {names[o]: {} for o in ALL if o != h}}
                             for h in ALL}
    assert gate({"n1": sample()}, ["n1"], ["n1"], ALL, {}, names, paths)["ok"]
    assert not gate({"n1": sample()}, ["n1"], ["n1"], ALL, {}, {}, paths)["ok"]


ALERTS = {"alerts": [
    {"labels": {"alertname": "MeshLinkDown", "node": "n2"}, "state": "firing"},
    {"labels": {"alertname": "MeshCertificateNearExpiry", "node": "n3"}, "state": "firing"},
    {"labels": {"alertname": "MeshNodeNotReady", "node": "n1"}, "state": "pending"},
    {"labels": {"alertname": "Watchdog"}, "state": "firing"}]}


def test_firing_is_the_labs_rule() -> None:
    from meshcore_tools.lab.prometheus import firing as labs

    for ignore in ((), ("Watchdog",)):
        assert gate_mod.firing(ALERTS, ignore) == labs(ALERTS, ignore)
    assert gate_mod.firing(None) == [] and gate_mod.firing({"alerts": [3]}) == []


def test_only_alerts_new_since_the_switch_fail_the_gate() -> None:
    before = {"alerts": ALERTS["alerts"][1:]}
    def judge(alerts: dict[str, Any]) -> dict[str, Any]:
        return dict(gate({"n1": sample()}, ["n1"], ["n1"], ALL, {}, {}, paths_for(ALL), alerts))

    v = judge({"before": before, "after": ALERTS, "ignore": []})
    assert v["failures"] == ["alerts firing that were neither firing nor pending before the "
                             "switch: MeshLinkDown{node=n2}"] and v["alerts_checked"]
    assert v["alerts"]["after"] == gate_mod.firing(ALERTS)
    # Pending before the switch, firing after the soak: its condition held already.
    pending = {"alerts": [{**a, "state": "pending"} for a in ALERTS["alerts"]]}
    assert judge({"before": pending, "after": ALERTS, "ignore": []})["ok"]
    assert judge({"before": before, "after": ALERTS, "ignore": ["MeshLinkDown"]})["ok"]
    assert judge({"before": ALERTS, "after": before, "ignore": []})["ok"]  # one cleared
    v = judge({"before": None, "after": ALERTS, "ignore": []})  # no monitoring host
    assert v["ok"] and not v["alerts_checked"]


# -- the report from a synthetic event list --------------------------------------------

def ev(kind: str, host: str, task: str, res: dict[str, Any] | None = None,
       t: float = 0.0, **data: Any) -> dict[str, Any]:
    return {"event": kind, "created": f"2026-12-04T12:00:{t:06.3f}",
            "event_data": {"host": host, "task": task, "res": res or {}, **data}}


def wave(hosts: list[str], t: float) -> list[dict[str, Any]]:
    return [ev("runner_on_ok", h, TASKS["wave"], {"ansible_facts": {"rollout_wave": hosts}}, t)
            for h in hosts]


def ok(host: str, key: str, t: float, **res: Any) -> dict[str, Any]:
    return ev("runner_on_ok", host, TASKS[key], res, t)


def switched(host: str, t: float, ready: float | None = 1.5) -> dict[str, Any]:
    return ok(host, "switch", t, rc=0, changed=True,
              stdout=json.dumps({"changed": True, "current": "r2", "ready_after_s": ready}))


def test_report_of_a_canary_that_fails_and_is_rolled_back() -> None:
    verdict = {"ok": False, "failures": ["n1: not ready (paths_current)"],
               "hosts": {"n1": {"ok": False, "problems": ["not ready (paths_current)"]}}}
    events = [
        {"event": "playbook_on_play_start", "event_data": {"play": "Roll out an agent release"}},
        *wave(["n1"], 1.0),
        ok("n1", "before", 2.0, ansible_facts={"rollout_previous": "r1"}),
        ok("n1", "target", 3.0, ansible_facts={"rollout_target": "r2"}),
        ok("n1", "rounds", 3.5, ansible_facts={"rollout_rounds": [["n1"]]}),
        switched("n1", 4.0, ready=None),
        ok("n1", "verdict", 9.5, rollout_verdict=verdict),
        ok("n1", "rollback", 10.0, changed=True,
           stdout=json.dumps({"changed": True, "current": "r1", "ready_after_s": 2.0})),
        ev("runner_on_failed", "n1", TASKS["stop"], {"msg": "The wave n1 failed"}, 10.5),
        {"event": "playbook_on_stats", "event_data": {"failures": {"n1": 1}, "ok": {"n1": 9}}},
    ]
    r = build_report(events, hosts_all=ALL)
    assert r["status"] == "stopped" and r["target"] == "r2"
    (w,) = r["waves"]
    assert (w["index"], w["hosts"], w["status"], w["gate"]) == (1, ["n1"], "rolled_back", verdict)
    assert w["duration_s"] == pytest.approx(9.5) and w["gate_after_switch_s"] == pytest.approx(5.5)
    assert w["rounds"] == [["n1"]]
    n1 = r["hosts"]["n1"]
    assert (n1["before"], n1["target"], n1["status"]) == ("r1", "r2", "rolled_back")
    assert n1["switch"]["ready_after_s"] is None and n1["rollback"]["to"] == "r1"
    assert [r["hosts"][h]["status"] for h in ("n2", "n3", "n4")] == ["not_reached"] * 3
    assert r["stats"]["failures"] == {"n1": 1}


def test_an_unreachable_discard_target_does_not_mark_the_host_that_ran_it() -> None:
    """The discard runs once, delegated to each node never reached: one of them being
    unreachable makes the looped task unreachable for the (rolled back) host that ran it."""
    bad = {"ok": False, "failures": ["n1: x"], "hosts": {}}
    results = [{"item": ["n2", ""], "changed": True}, {"item": ["n2", ".sigs"], "changed": True},
               {"item": ["n3", ""], "unreachable": True}]
    events = [*wave(["n1"], 1.0), switched("n1", 2.0),
              ok("n1", "verdict", 3.0, rollout_verdict=bad),
              ok("n1", "rollback", 4.0, stdout=json.dumps({"changed": True, "current": "r1"})),
              ev("runner_on_unreachable", "n1", TASKS["discard"], {"results": results}, 5.0),
              ev("runner_on_failed", "n1", TASKS["stop"], {"msg": "The wave n1 failed"}, 6.0)]
    r = build_report(events, hosts_all=ALL)
    assert r["hosts"]["n1"]["status"] == "rolled_back" and r["status"] == "stopped"
    assert [h for h in ALL if r["hosts"][h]["unstaged"]] == ["n2"]


def test_report_gives_the_rounds_in_the_order_they_ran() -> None:
    """Ansible runs included rounds in the order their first host reaches them: the plan
    [[n1], [n2, n3], [n4]] ran as [n2, n3], then n4, then n1."""
    good = {"ok": True, "failures": [], "hosts": {}}
    events = [*wave(ALL, 1.0),
              ok("n1", "rounds", 2.0, ansible_facts={"rollout_rounds": [["n1"], ["n2", "n3"],
                                                                          ["n4"]]}),
              switched("n2", 3.0), switched("n3", 3.2), switched("n4", 5.0), switched("n1", 7.0),
              ok("n1", "verdict", 9.0, rollout_verdict=good)]
    (w,) = build_report(events, hosts_all=ALL)["waves"]
    assert w["rounds"] == [["n1"], ["n2", "n3"], ["n4"]]
    assert w["rounds_run"] == [["n2", "n3"], ["n4"], ["n1"]]


def test_report_of_a_completed_rollout_with_an_unreachable_host_is_not_completed() -> None:
    good = {"ok": True, "failures": [], "hosts": {}}
    events = [*wave(["n1"], 1.0), switched("n1", 2.0), ok("n1", "verdict", 3.0,
                                                          rollout_verdict=good),
              ok("n1", "done", 3.1),
              *wave(["n2", "n3"], 4.0), switched("n2", 5.0),
              ev("runner_on_unreachable", "n3", TASKS["switch"], {"msg": "ssh: timeout"}, 5.5),
              ok("n2", "verdict", 6.0, rollout_verdict={"ok": False, "failures": ["n3: x"]}),
              ok("n2", "rollback", 7.0, stdout=json.dumps({"changed": True, "current": "r1"}))]
    r = build_report(events)
    assert [w["status"] for w in r["waves"]] == ["passed", "rolled_back"]
    assert {h: v["status"] for h, v in r["hosts"].items()} == {
        "n1": "upgraded", "n2": "rolled_back", "n3": "unreachable"}
    assert r["hosts"]["n3"]["failed_tasks"] == [{"task": TASKS["switch"], "msg": "ssh: timeout"}]
    assert r["status"] == "stopped"


def test_report_of_a_clean_rollout() -> None:
    good = {"ok": True, "failures": [], "hosts": {}}
    events = []
    for i, hosts in enumerate((["n1"], ["n2"], ["n3", "n4"])):
        t = 10.0 * i
        events += [*wave(hosts, t), *(switched(h, t + 1) for h in hosts),
                   ok(hosts[0], "verdict", t + 5, rollout_verdict=good),
                   *(ok(h, "done", t + 6) for h in hosts)]
    r = build_report(events, hosts_all=ALL)
    assert r["status"] == "completed" and len(r["waves"]) == 3
    assert all(w["status"] == "passed" for w in r["waves"])


def test_a_failed_final_check_on_the_controller_fails_the_rollout() -> None:
    good = {"ok": True, "failures": [], "hosts": {}}
    events = [*wave(["n1"], 1.0), switched("n1", 2.0),
              ok("n1", "verdict", 3.0, rollout_verdict=good), ok("n1", "done", 3.1),
              ev("runner_on_failed", "localhost", "Assert every mesh node runs the release",
                 {"msg": "n2 was not rolled"}, 4.0)]
    r = build_report(events, hosts_all=["n1"])
    assert set(r["hosts"]) == {"n1"} and r["hosts"]["n1"]["status"] == "upgraded"
    assert r["controller"]["localhost"] == {"status": "failed", "failed_tasks": [
        {"task": "Assert every mesh node runs the release", "msg": "n2 was not rolled"}]}
    assert r["status"] == "failed"


def test_garbage_events_are_ignored() -> None:
    r = build_report([{}, {"event": "runner_on_ok"}, {"event": "runner_on_ok",
                                                       "event_data": {"host": 3}},
                      {"event": "verbose", "stdout": "TASK [x]"}])
    assert r["status"] == "failed" and r["waves"] == [] and r["hosts"] == {}


# -- the report from a real ansible-runner event stream --------------------------------

# The failure keywords are rollout.yml's own (test_stand_in_keeps_the_failure_keywords).
STAND_IN = """
- name: Roll out an agent release
  hosts: mesh_nodes
  serial: [1, "100%"]
  {keywords}
  gather_facts: false
  tasks:
    - name: "{wave}"
      ansible.builtin.set_fact:
        rollout_wave: "{{{{ ansible_play_batch }}}}"
    - name: Touch the host (the unreachable one fails here)
      ansible.builtin.ping:
      register: rollout_touch
    - name: "{before}"
      ansible.builtin.set_fact:
        rollout_previous: r1
    - name: "{target}"
      ansible.builtin.set_fact:
        rollout_target: r2
    - name: "{switch}"
      ansible.builtin.command:
        argv: [echo, '{{"changed": true, "current": "r2", "ready_after_s": 0.5}}']
      throttle: 1
      register: mesh_release_use
      changed_when: true
      failed_when: false
    - name: Judge
      ansible.builtin.set_fact:
        rollout_verdict:
          ok: "{{{{ rollout_bad | length == 0 }}}}"
          failures: "{{{{ rollout_bad }}}}"
      vars:
        rollout_bad: >-
          {{{{ rollout_wave | zip(rollout_wave | map('extract', hostvars, 'rollout_touch'))
             | selectattr('1.unreachable', 'defined') | map(attribute='0') | list }}}}
      run_once: true
    - name: "{verdict}"
      ansible.builtin.debug:
        var: rollout_verdict
      run_once: true
    - name: "{rollback}"
      ansible.builtin.command:
        argv: [echo, '{{"changed": true, "current": "r1"}}']
      throttle: 1
      changed_when: true
      when: not rollout_verdict.ok
    - name: "{stop}"
      ansible.builtin.fail:
        msg: gate failed
      when: not rollout_verdict.ok
    - name: "{done}"
      ansible.builtin.set_fact:
        rollout_done: r2
"""


FAILURE_KEYWORDS = ("max_fail_percentage", "any_errors_fatal", "ignore_unreachable")


def failure_keywords() -> str:
    play = wave_play()
    return "\n  ".join(f"{k}: {json.dumps(play[k])}" for k in FAILURE_KEYWORDS if k in play)


def stand_in_playbook() -> str:
    """The stand-in mesh play with the real play's failure keywords, followed by the real
    playbook's own controller plays (its final check on localhost)."""
    plays = yaml.safe_load((ROOT / "playbooks/rollout.yml").read_text())
    return (STAND_IN.format(keywords=failure_keywords(), **TASKS)
            + yaml.safe_dump([p for p in plays if p["hosts"] == "localhost"], sort_keys=False))


def run_stand_in(tmp_path: Path, unreachable: bool) -> tuple[int, list[dict[str, Any]]]:
    ansible_runner = pytest.importorskip("ansible_runner")
    project = tmp_path / "project"
    project.mkdir()
    (project / "rollout.yml").write_text(stand_in_playbook())
    inventory = tmp_path / "hosts"
    local = f"ansible_connection=local ansible_python_interpreter={sys.executable}"
    # n4 on port 9: nothing listens
    n4 = ("n4 ansible_connection=ssh ansible_host=127.0.0.1 ansible_port=9 ansible_user=nobody"
          if unreachable else f"n4 {local}")
    inventory.write_text(f"localhost {local}\n[mesh_nodes]\nn1 {local}\nn2 {local}\n"
                         f"n3 {local}\n{n4}\n")
    events: list[dict[str, Any]] = []

    def keep(e: dict[str, Any]) -> bool:
        events.append(e)
        return True

    (tmp_path / "runner").mkdir()
    r = ansible_runner.run(private_data_dir=str(tmp_path / "runner"), project_dir=str(project),
                           playbook="rollout.yml", inventory=str(inventory), quiet=True,
                           envvars={"ANSIBLE_HOST_KEY_CHECKING": "False",
                                    "ANSIBLE_TIMEOUT": "3",
                                    "PATH": runner_path()},
                           event_handler=keep)
    return int(r.rc), events


def test_report_from_a_real_runner_event_stream(tmp_path: Path) -> None:
    """Also the proof that the play's failure keywords roll a wave with an unreachable
    host back: with any_errors_fatal the batch ends at the unreachable host."""
    rc, events = run_stand_in(tmp_path, unreachable=True)
    assert rc != 0  # the second wave failed its gate
    report = build_report(events, hosts_all=ALL)
    assert [w["hosts"] for w in report["waves"]] == [["n1"], ["n2", "n3", "n4"]]
    assert [w["status"] for w in report["waves"]] == ["passed", "rolled_back"]
    assert {h: v["status"] for h, v in report["hosts"].items()} == {
        "n1": "upgraded", "n2": "rolled_back", "n3": "rolled_back", "n4": "unreachable"}
    assert report["waves"][1]["gate"] == {"ok": False, "failures": ["n4"]}
    assert report["hosts"]["n1"]["switch"]["ready_after_s"] == 0.5
    assert report["hosts"]["n2"]["rollback"]["to"] == "r1"
    assert report["status"] == "stopped" and report["target"] == "r2"
    # ansible's own recap counts the ignored unreachable host as ignored, not dark:
    # only the events say it was unreachable
    assert report["stats"]["dark"] == {} and "n4" in report["stats"]["ignored"]


def test_report_of_a_clean_real_runner_rollout_is_completed(tmp_path: Path) -> None:
    """Every wave passes and the playbook's final check runs on localhost: localhost is
    the controller, not a mesh node never reached (the lab test's first run reported
    'failed' for exactly this)."""
    rc, events = run_stand_in(tmp_path, unreachable=False)
    assert rc == 0
    report = build_report(events, hosts_all=ALL)
    assert any(e.get("event_data", {}).get("host") == "localhost" for e in events)
    assert set(report["hosts"]) == set(ALL)
    assert report["controller"] == {"localhost": {"status": "ok", "failed_tasks": []}}
    assert report["status"] == "completed", report


def test_inventory_hosts_walks_child_groups(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"children": {
        "mesh_nodes": {"hosts": {"n1": {}, "n2": {}}, "children": {"gateways": {}}},
        "gateways": {"hosts": {"g1": {}}}, "monitor": {"hosts": {"m1": {}}}}}}))
    assert inventory_hosts(inv) == ["g1", "n1", "n2"]
