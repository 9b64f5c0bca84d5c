"""rollout.yml's own gate tasks (the Jinja that gathers each node's sample and judges
the wave) and its rollback command, run by Ansible on local hosts, on registered
results shaped like the modules' (uri, command) and a stand-in meshctl, without a mesh.

The tasks are taken from playbooks/rollout.yml by name, so the test runs what the
playbook runs; the verdict is read from ansible-runner's events."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshcore_tools import ROOT
from meshcore_tools.playbook import runner_path
from meshcore_tools.rollout import TASKS, build_report

GATE_TASKS = ("Gate: the failovers of nodes with a new failover storm",
              "Gate: plan the data-plane probes through the wave",
              "Gate: data-plane probes from each wave node",
              "Gate: data-plane probes through the wave, from nodes outside it",
              "Gate: collect this node's sample", "Gate: judge the wave", TASKS["verdict"])
PROBE_VARS = ("rollout_probe_per_node", "rollout_probe_max_sources", "rollout_probe_count",
              "rollout_probe_interval_s")
METRICS = 'meshcore_failovers_total 1.0\nmeshcore_adverts_rejected_total{reason="x"} 0.0\n'
HOSTS = ["n1", "n2", "n3"]


SOAK_STARTED = time.time()
SKIPPED = {"skipped": True, "changed": False, "skip_reason": "Conditional result was False"}


def wave_play() -> dict[str, Any]:
    """rollout.yml's play of waves (its first play stages the release everywhere)."""
    plays = yaml.safe_load((ROOT / "playbooks/rollout.yml").read_text())
    (play,) = [p for p in plays if p["name"] == "Roll out an agent release"]
    return dict(play)


def alerts(*firing: str) -> dict[str, Any]:
    """A uri result of the monitoring host's /api/v1/alerts."""
    return {"status": 200, "json": {"status": "success", "data": {"alerts": [
        {"labels": {"alertname": name, "node": "n1"}, "state": "firing"} for name in firing]
        + [{"labels": {"alertname": "Pending", "node": "n2"}, "state": "pending"}]}}}


def registered(host: str, broken: dict[str, str],
               monitor: tuple[dict[str, Any], dict[str, Any]] = (SKIPPED, SKIPPED)
               ) -> dict[str, Any]:
    """What the gate's data tasks register on *host*; *broken*: host -> what is wrong;
    *monitor*: the alerts before and after (skipped: no monitoring host)."""
    what = broken.get(host)
    ready = {"status": 503, "json": {"ready": False, "failing": ["own_advert"]}} \
        if what == "not ready" else {"status": 200, "json": {"ready": True, "failing": []}}
    if what == "unreachable":
        ready = {"unreachable": True, "msg": "Failed to connect", "changed": False}
    after = METRICS.replace("failovers_total 1.0", "failovers_total 7.0") \
        if what == "failovers" else METRICS
    return {
        "rollout_wave": HOSTS,
        "rollout_target": "r2",
        "mesh_release_use": {"rc": 0, "stdout": json.dumps({"changed": True, "current": "r2"})},
        "rollout_metrics_before": {"status": 200, "content": METRICS},
        "rollout_readyz": ready,
        "rollout_metrics_after": {"status": 200, "content": after},
        "rollout_confirm": {"rc": 0, "stdout": json.dumps({"last": None, "pending": None})},
        "rollout_after_list": {"rc": 0, "stdout": json.dumps({"current": "r2"})},
        "rollout_alerts_before": monitor[0],
        "rollout_alerts_after": monitor[1],
        "rollout_soak_started": SOAK_STARTED,
    }


def play(broken: dict[str, str], missing_path: str | None,
         monitor: tuple[dict[str, Any], dict[str, Any]],
         probe_count: int = 3, api: str | None = None) -> list[dict[str, Any]]:
    source = wave_play()
    by_name = {t["name"]: t for t in source["tasks"]}
    paths = {"results": [
        {"item": h, "json": {"destinations": {o: {"primary_next_hop": o} for o in HOSTS
                                              if o != h and (h, o) != ("n3", missing_path)}}}
        for h in HOSTS]}
    keys = registered("n1", {}, monitor)
    setup = [{"name": "Fake what the data tasks registered",
              "ansible.builtin.set_fact": {k: f"{{{{ rollout_fake[inventory_hostname].{k} }}}}"
                                           for k in keys}},
             {"name": "Fake the path tables", "ansible.builtin.set_fact":
              {"rollout_paths": paths}}]
    return [{"name": source["name"], "hosts": "mesh_nodes", "gather_facts": False,
             "vars": {k: source["vars"][k] for k in ("rollout_bounds", "rollout_node_names",
                                                     "rollout_ignore_alerts", "rollout_api",
                                                     "rollout_storm_window_s", *PROBE_VARS)}
             | {"rollout_fake": {h: registered(h, broken, monitor) for h in HOSTS},
                "rollout_probe_count": probe_count}
             | ({"rollout_api": api} if api else {}),
             "tasks": setup + [by_name[n] for n in GATE_TASKS]}]


def run_play(tmp_path: Path, plays: list[dict[str, Any]], hosts: list[str],
             envvars: dict[str, str] | None = None,
             replace: dict[str, str] | None = None,
             host_vars: dict[str, str] | None = None) -> tuple[int, list[dict[str, Any]]]:
    """Run *plays* with ansible-runner on local *hosts* (group mesh_nodes, each with a
    loopback address as its mesh_node_address and the inventory variables of
    *host_vars* (host: "k=v ..."), and the playbooks' files/ and tasks/ beside the play,
    with the files of *replace* (path: text) swapped in): rc and events."""
    ansible_runner = pytest.importorskip("ansible_runner")
    project = tmp_path / "project"
    project.mkdir()
    (project / "play.yml").write_text(yaml.safe_dump(plays, sort_keys=False))
    shutil.copytree(ROOT / "playbooks/files", project / "files")
    shutil.copytree(ROOT / "playbooks/tasks", project / "tasks")
    for path, text in (replace or {}).items():
        (project / path).write_text(text)
    local = f"ansible_connection=local ansible_python_interpreter={sys.executable}"
    (tmp_path / "hosts").write_text("[mesh_nodes]\n" + "".join(
        f"{h} {local} mesh_node_address=127.0.0.{i + 1} {(host_vars or {}).get(h, '')}\n"
        for i, h in enumerate(hosts)))
    (tmp_path / "runner").mkdir()
    events: list[dict[str, Any]] = []

    def keep(e: dict[str, Any]) -> bool:
        events.append(e)
        return True

    r = ansible_runner.run(private_data_dir=str(tmp_path / "runner"), project_dir=str(project),
                           playbook="play.yml", inventory=str(tmp_path / "hosts"), quiet=True,
                           envvars={"PATH": runner_path(), **(envvars or {})},
                           event_handler=keep)
    return r.rc, events


def verdict(tmp_path: Path, broken: dict[str, str], missing_path: str | None = None,
            monitor: tuple[dict[str, Any], dict[str, Any]] = (SKIPPED, SKIPPED),
            probe_count: int = 3, api: str | None = None) -> dict[str, Any]:
    rc, events = run_play(tmp_path, play(broken, missing_path, monitor, probe_count, api),
                          HOSTS,
                          {"ANSIBLE_FILTER_PLUGINS": str(ROOT / "plugins/filter")})
    failed = [(e["event_data"].get("task"), e["event_data"].get("res", {}).get("msg"))
              for e in events if e.get("event") == "runner_on_failed"]
    assert rc == 0, failed
    # the report builder finds the verdict once a wave is recorded; read it directly here
    got = [e["event_data"]["res"]["rollout_verdict"] for e in events
           if e.get("event") == "runner_on_ok" and e["event_data"].get("task") == TASKS["verdict"]]
    assert len(got) == 1
    assert build_report(events)["waves"] == []  # no "Record the wave" task in this play
    return dict(got[0])


def test_a_healthy_wave_passes_the_playbooks_gate(tmp_path: Path) -> None:
    v = verdict(tmp_path, {})
    assert v["ok"] is True and v["failures"] == []
    assert set(v["hosts"]) == set(HOSTS)
    assert v["alerts_checked"] is False  # no monitoring host: the alert tasks were skipped
    # each node pinged the two others' (loopback) addresses with mesh_probe.py
    assert v["probes_checked"] == 6


def test_probes_that_cannot_run_fail_the_playbooks_gate(tmp_path: Path) -> None:
    v = verdict(tmp_path, {}, probe_count=0)  # mesh_probe.py refuses a count of 0
    assert v["ok"] is False and v["probes_checked"] == 6
    assert len(v["failures"]) == 6
    assert all(f.startswith("probe n") and ", own via n" in f and ": did not run (" in f
               for f in v["failures"]), v["failures"]


def test_a_new_firing_alert_fails_the_playbooks_gate(tmp_path: Path) -> None:
    v = verdict(tmp_path, {}, monitor=(alerts("Old"), alerts("Old", "MeshNodeNotReady")))
    assert v["alerts_checked"] is True and v["ok"] is False
    assert v["failures"] == [
        "alerts firing that were neither firing nor pending before the switch: "
        "MeshNodeNotReady{node=n1}"]


def test_the_playbooks_gate_names_every_failure(tmp_path: Path) -> None:
    v = verdict(tmp_path, {"n1": "not ready", "n2": "unreachable", "n3": "failovers"},
                missing_path="n1")
    assert v["ok"] is False
    assert v["failures"] == [
        "n1: not ready (own_advert)",
        "n2: unreachable or failed during the wave",
        "n3: failovers grew by 6 during the soak (bound 2)",
        "n3: no path to n1",
    ]


@pytest.mark.parametrize("switch_rc, meshctl, flags", [
    (0, "target", ["--allow-wire-change", "--no-confirm", "--wait-ready", "60"]),
    (1, "previous", ["--allow-wire-change"]),  # the previous release's meshctl may be older
])
def test_the_rollback_command(tmp_path: Path, switch_rc: int, meshctl: str,
                              flags: list[str]) -> None:
    root = tmp_path / "opt"
    fakes = {"target": root / "releases/r2/venv/bin/meshctl",
             "previous": root / "releases/r1/venv/bin/meshctl"}
    for name, path in fakes.items():
        path.parent.mkdir(parents=True)
        path.write_text(f"#!{sys.executable}\nimport json, sys\n"
                        f"print(json.dumps({{'changed': True, 'current': 'r1', "
                        f"'who': '{name}', 'argv': sys.argv[1:]}}))\n")
        path.chmod(0o755)
    tasks = yaml.safe_load((ROOT / "playbooks/tasks/rollout-rollback.yml").read_text())
    task = {t["name"]: t for t in tasks}[TASKS["rollback"]]
    play = [{"hosts": "mesh_nodes", "gather_facts": False,
             "vars": {"mesh_agent_release_dir": str(root / "releases/r2"),
                      "mesh_agent_install_root": str(root), "rollout_previous": "r1",
                      "rollout_ready_timeout_s": 60, "mesh_release_use": {"rc": switch_rc},
                      "rollout_verdict": {"ok": False}},
             "tasks": [task]}]
    rc, events = run_play(tmp_path, play, ["n1"])
    assert rc == 0
    (res,) = [e["event_data"]["res"] for e in events if e.get("event") == "runner_on_ok"]
    out = json.loads(res["stdout"])
    assert out["who"] == meshctl and res["changed"] is True
    assert out["argv"] == ["--json", "release", "--root", str(root), "use", "r1", *flags]
    assert build_report(events)["hosts"]["n1"]["rollback"]["to"] == "r1"


# -- a failover storm the wave explains, through the playbook's own tasks ------------------

def storm(node: str) -> dict[str, Any]:
    return {"status": 200, "json": {"status": "success", "data": {"alerts": [
        {"labels": {"alertname": "MeshFailoverStorm", "node": node}, "state": "firing"}]}}}


@pytest.fixture
def events_api() -> Iterator[tuple[str, dict[str, Any]]]:
    """A stand-in agent API: /v1/events answers what the test puts in state["events"] and
    records the query it was asked."""
    state: dict[str, Any] = {"events": [], "queries": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state["queries"].append(self.path)
            body = json.dumps({"node": "n2", "events": state["events"]}).encode()
            self.send_response(200 if self.path.startswith("/v1/events?") else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()


# n2, the storm's node, is a wave node: its failovers before the soak are its restart's
# doing, away from wave nodes or not; in the soak they count.
@pytest.mark.parametrize("subjects, in_soak, ok", [
    (["n1", "n3", "n1", "n3", "n1", "n3"], False, True),
    (["n9", "n9", "n9", "n1"], False, True),
    (["n9", "n9", "n9", "n1"], True, False)])
def test_a_failover_storm_is_judged_by_its_events(tmp_path: Path,
                                                  events_api: tuple[str, dict[str, Any]],
                                                  subjects: list[str], in_soak: bool,
                                                  ok: bool) -> None:
    url, state = events_api
    start = SOAK_STARTED + 1 if in_soak else SOAK_STARTED - 60
    state["events"] = [{"id": i, "kind": "failover", "subject": s, "reason": "restart",
                        "wall": start + i} for i, s in enumerate(subjects)]
    v = verdict(tmp_path, {}, monitor=(alerts("Old"), storm("n2")), api=url)
    # one read, of n2's failovers over the alert's window before the soak
    (query,) = state["queries"]
    assert query.startswith("/v1/events?kind=failover&after=0&limit=1000&since=")
    assert int(query.rsplit("=", 1)[1]) == int(SOAK_STARTED - 420)
    if ok:
        assert v["ok"], v["failures"]
        assert v["alerts"]["explained"] == ["MeshFailoverStorm{node=n2}"]
    else:
        assert v["failures"] == ["MeshFailoverStorm{node=n2}: 4 failovers not explained by "
                                 "the wave's restarts (bound 2), away from: n9 (restart), in "
                                 "the soak x3, n1 (restart), in the soak"]


# -- the switch rounds, through the playbook's own tasks ----------------------------------

def assert_path_rounds_ran_apart(ran: dict[str, tuple[float, float]]) -> None:
    """*ran*: host -> (start, end) of its switch or restart, for the path n1-n2-n3-n4-n5
    and n6 unknown, whose rounds are [n3], [n6], [n2, n5], [n1, n4]: the nodes of a round
    ran together, and no two nodes of different rounds did."""

    def overlap(a: str, b: str) -> bool:
        return ran[a][0] < ran[b][1] and ran[b][0] < ran[a][1]

    assert overlap("n2", "n5") and overlap("n1", "n4")
    for a, b in [("n3", "n2"), ("n3", "n5"), ("n3", "n1"), ("n2", "n1"), ("n2", "n4"),
                 ("n5", "n4"), ("n5", "n1"),
                 *(("n6", h) for h in ("n1", "n2", "n3", "n4", "n5"))]:
        assert not overlap(a, b), (a, b, ran)


def test_the_wave_switches_in_rounds_of_nodes_that_share_no_neighbour(tmp_path: Path) -> None:
    """A path n1-n2-n3-n4-n5, and n6, whose agent did not answer (its read failed, as one
    did in the 50-node lab): the rounds are [n3], [n6], [n2, n5], [n1, n4], with the
    agents named by the inventory's mesh_agent_node_name (not the host's). A stand-in
    meshctl records when each node's switch ran: a round's nodes run together, rounds
    never overlap, and every node switched once."""
    hosts = ["n1", "n2", "n3", "n4", "n5"]
    log = tmp_path / "switches.log"
    release = tmp_path / "releases/r2"
    (release / "venv/bin").mkdir(parents=True)
    meshctl = release / "venv/bin/meshctl"
    meshctl.write_text(f"#!{sys.executable}\nimport json, sys, time\n"
                       "t0 = time.time(); time.sleep(1.0)\n"
                       f"with open({str(log)!r}, 'a') as f:\n"
                       "    f.write(json.dumps([sys.argv[4], t0, time.time()]) + '\\n')\n"
                       "print(json.dumps({'changed': True, 'current': 'r2'}))\n")
    meshctl.chmod(0o755)
    for h in [*hosts, "n6"]:  # each node's install root holds the release
        (tmp_path / h / "releases").mkdir(parents=True)
        (tmp_path / h / "releases/r2").symlink_to(release)
    edges = [("n1", "n2"), ("n2", "n3"), ("n3", "n4"), ("n4", "n5")]
    # the agents' names are the inventory's mesh_agent_node_name (node-n1 ..), which the
    # play's rollout_node_names maps the hosts to
    nbrs: dict[str, Any] = {h: {"json": {"node": f"node-{h}", "neighbors": [
        {"name": f"node-{b if a == h else a}"} for a, b in edges if h in (a, b)]}}
        for h in hosts}
    # n6's agent did not answer (a uri result without json): it switches alone
    hosts.append("n6")
    nbrs["n6"] = {"failed": True, "status": -1, "msg": "Status code was -1: timed out"}
    source = wave_play()
    by_name = {t["name"]: t for t in source["tasks"]}
    plays = [{"name": "rounds", "hosts": "mesh_nodes", "gather_facts": False,
              "vars": {"rollout_fake": nbrs,
                       "rollout_node_names": source["vars"]["rollout_node_names"],
                       "rollout_round_max": 0, "rollout_ready_timeout_s": 60,
                       "mesh_agent_release": "r2", "mesh_agent_release_dir": str(release)},
              "tasks": [{"name": "Fake the neighbours", "ansible.builtin.set_fact": {
                  "rollout_neighbours": "{{ rollout_fake[inventory_hostname] }}",
                  "mesh_agent_install_root": f"{tmp_path}/{{{{ inventory_hostname }}}}"}},
                        by_name["Plan the switch rounds"],
                        by_name["Switch the wave, one round of nodes that share no neighbour "
                                "at a time"]]}]
    rc, events = run_play(tmp_path, plays, hosts,
                          {"ANSIBLE_FILTER_PLUGINS": str(ROOT / "plugins/filter"),
                           "ANSIBLE_FORKS": "5"},
                          host_vars={h: f"mesh_agent_node_name=node-{h}" for h in hosts})
    assert rc == 0
    (planned,) = [e["event_data"]["res"]["ansible_facts"]["rollout_rounds"] for e in events
                  if e.get("event") == "runner_on_ok"
                  and e["event_data"].get("task") == "Plan the switch rounds"]
    assert planned == [["n3"], ["n6"], ["n2", "n5"], ["n1", "n4"]]
    ran = {Path(root).name: (t0, t1) for root, t0, t1 in
           (json.loads(line) for line in log.read_text().splitlines())}
    assert sorted(ran) == hosts and len(log.read_text().splitlines()) == 6
    assert_path_rounds_ran_apart(ran)
    # the report reads each node's switch from the included task's events
    report = build_report(events)
    assert all(report["hosts"][h]["switch"]["changed"] for h in hosts)
