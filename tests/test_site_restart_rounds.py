"""site.yml's mesh-node play restarts running agents in rounds (playbooks/mesh-node.yml's
post_tasks), through the play's own tasks with ansible-runner on local hosts: the rounds'
plan from each node's neighbours, and the rounds one after another. The round's own tasks
(tasks/agent-restart.yml: systemd restart, then /readyz) are swapped for a stand-in that
records its times; the real ones run in the lab (tests/test_lab_e2e.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshcore_tools import ROOT
from test_rollout_gate_tasks import assert_path_rounds_ran_apart, run_play


def test_running_agents_restart_in_rounds_of_nodes_that_share_no_neighbour(
        tmp_path: Path) -> None:
    """A path n1-n2-n3-n4-n5; n6 waits too but its neighbours could not be read; n7's
    agent needs no restart (or was not running: the role started it at once). The agents
    are named node-n1 .. by the inventory's mesh_agent_node_name, which the neighbours'
    answers use. The rounds are [n3], [n6], [n2, n5], [n1, n4]; n7 is never restarted."""
    hosts = ["n1", "n2", "n3", "n4", "n5", "n6", "n7"]
    log = tmp_path / "restarts.log"
    edges = [("n1", "n2"), ("n2", "n3"), ("n3", "n4"), ("n4", "n5")]
    nbrs: dict[str, Any] = {h: {"json": {"node": f"node-{h}", "neighbors": [
        {"name": f"node-{b if a == h else a}"} for a, b in edges if h in (a, b)]}}
        for h in hosts[:5]}
    nbrs["n6"] = {"failed": True, "status": -1, "msg": "Status code was -1: timed out"}
    play = yaml.safe_load((ROOT / "playbooks/mesh-node.yml").read_text())[0]
    post = {t["name"]: t for t in play["post_tasks"]}
    read = "Read the neighbours of each node whose agent waits for its restart"
    assert set(post) - {read} == {"Plan the agent restart rounds",
                                  "Restart the agents, one round of nodes that share no "
                                  "neighbour at a time"}
    plays = [{"name": "restart rounds", "hosts": "mesh_nodes", "gather_facts": False,
              "vars": {"fake": nbrs},
              "tasks": [{"name": "Fake the pending restarts and the neighbours",
                         "ansible.builtin.set_fact": {
                             "mesh_agent_restart_pending": "{{ inventory_hostname != 'n7' }}",
                             "mesh_node_neighbours":
                                 "{{ fake[inventory_hostname] | default({}) }}"}},
                        *(t for n, t in post.items() if n != read)]}]
    stand_in = [{"name": "Restart the agent (stand-in)", "ansible.builtin.command": {
        "argv": [sys.executable, "-c",
                 "import json, sys, time\nt0 = time.time(); time.sleep(1.0)\n"
                 f"with open({str(log)!r}, 'a') as f:\n"
                 "    f.write(json.dumps([sys.argv[1], t0, time.time()]) + '\\n')\n",
                 "{{ inventory_hostname }}"]}, "changed_when": True}]
    rc, events = run_play(tmp_path, plays, hosts,
                          {"ANSIBLE_FILTER_PLUGINS": str(ROOT / "plugins/filter"),
                           "ANSIBLE_FORKS": "7"},
                          replace={"tasks/agent-restart.yml": yaml.safe_dump(stand_in)},
                          host_vars={h: f"mesh_agent_node_name=node-{h}" for h in hosts})
    assert rc == 0, [e.get("stdout") for e in events][-10:]
    (planned,) = {json.dumps(e["event_data"]["res"]["ansible_facts"]["mesh_node_restart_rounds"])
                  for e in events if e.get("event") == "runner_on_ok"
                  and e["event_data"].get("task") == "Plan the agent restart rounds"}
    assert json.loads(planned) == [["n3"], ["n6"], ["n2", "n5"], ["n1", "n4"]]
    ran = {h: (t0, t1) for h, t0, t1 in
           (json.loads(line) for line in log.read_text().splitlines())}
    assert sorted(ran) == hosts[:6] and len(log.read_text().splitlines()) == 6
    assert_path_rounds_ran_apart(ran)


@pytest.mark.parametrize("n2_ready", [True, False])
def test_a_release_switch_of_running_agents_goes_in_the_rounds_too(
        tmp_path: Path, n2_ready: bool) -> None:
    """The role leaves a running agent's switch to the rounds (its own tasks, by name, on
    local hosts with a ``current`` link each): n1-n3 run r1 and get r2, n4 runs r2
    already. The rounds then run the real tasks/agent-restart.yml, whose switch is
    ``meshctl release use r2 --wait-ready 60`` (a stand-in meshctl that logs its times):
    a path n1-n2-n3 puts each node in a round of its own, one after another. An agent
    that is not ready in time (``ready_after_s`` null, rc 0) fails its node and the play."""
    hosts = ["n1", "n2", "n3", "n4"]
    log = tmp_path / "switches.log"
    for h in hosts:
        root = tmp_path / h
        for rid in ("r1", "r2"):
            (root / "releases" / rid / "venv/bin").mkdir(parents=True)
        (root / "current").symlink_to(f"releases/{'r2' if h == 'n4' else 'r1'}/venv")
        meshctl = root / "releases/r2/venv/bin/meshctl"
        meshctl.write_text(f"#!{sys.executable}\nimport json, sys, time\n"
                           "t0 = time.time(); time.sleep(1.0)\n"
                           f"with open({str(log)!r}, 'a') as f:\n"
                           f"    f.write(json.dumps([{h!r}, t0, time.time(), sys.argv[1:]])"
                           " + '\\n')\n"
                           "print(json.dumps({'changed': True, 'current': 'r2', "
                           f"'ready_after_s': {1.0 if n2_ready or h != 'n2' else None}}}))\n")
        meshctl.chmod(0o755)
    main = {t["name"]: t for t in yaml.safe_load(
        (ROOT / "roles/mesh_agent/tasks/main.yml").read_text())}
    derived = yaml.safe_load((ROOT / "roles/mesh_agent/vars/main.yml").read_text())
    edges = [("n1", "n2"), ("n2", "n3")]
    nbrs = {h: {"json": {"node": h, "neighbors": [{"name": b if a == h else a}
                                                  for a, b in edges if h in (a, b)]}}
            for h in hosts}
    play = yaml.safe_load((ROOT / "playbooks/mesh-node.yml").read_text())[0]
    post = {t["name"]: t for t in play["post_tasks"]}
    read = "Read the neighbours of each node whose agent waits for its restart"
    plays = [{"name": "switch rounds", "hosts": "mesh_nodes", "gather_facts": False,
              "max_fail_percentage": 0,
              "vars": {"fake": nbrs, "mesh_agent_node_name": "{{ inventory_hostname }}",
                       "mesh_agent_install_root": f"{tmp_path}/{{{{ inventory_hostname }}}}",
                       "mesh_agent_release": "r2", "mesh_agent_release_keys_file": "keys.json",
                       "mesh_agent_release_dir":
                           f"{tmp_path}/{{{{ inventory_hostname }}}}/releases/r2",
                       "mesh_agent_restart_deferred": True, "mesh_agent_was_active":
                           {"stdout": "active"},
                       "mesh_node_ready_timeout_s": 60, "mesh_node_api": "http://127.0.0.1:9",
                       **derived},
              "tasks": [main["Read the release the running agent was started from"],
                        main["Leave the switch to the play's rounds"],
                        main["Switch to the verified release"],
                        {"name": "Fake the neighbours", "ansible.builtin.set_fact": {
                            "mesh_node_neighbours": "{{ fake[inventory_hostname] }}"}},
                        *(t for n, t in post.items() if n != read)]}]
    switch = "Switch to the release, one round at a time"  # tasks/release-use.yml
    rc, events = run_play(tmp_path, plays, hosts,
                          {"ANSIBLE_FILTER_PLUGINS": str(ROOT / "plugins/filter"),
                           "ANSIBLE_FORKS": "4"})
    if not n2_ready:
        assert rc != 0
        assert [e["event_data"]["host"] for e in events if e.get("event") == "runner_on_failed"
                and e["event_data"].get("task") == switch] == ["n2"]
        return
    assert rc == 0, [e.get("stdout") for e in events][-10:]
    # the role switched nothing itself
    assert not [e for e in events if e.get("event") == "runner_on_ok"
                and e["event_data"].get("task") == "Switch to the verified release"]
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(e["event_data"]["res"]["stdout"] for e in events
               if e.get("event") == "runner_on_ok" and e["event_data"].get("task") == switch)
    assert sorted(h for h, *_ in runs) == ["n1", "n2", "n3"]  # n4 runs r2 already
    assert all(argv == ["--json", "release", "--root", str(tmp_path / h), "use", "r2",
                        "--wait-ready", "60"] for h, _, _, argv in runs)
    ran = {h: (t0, t1) for h, t0, t1, _ in runs}
    for a, b in (("n1", "n2"), ("n2", "n3"), ("n1", "n3")):
        assert ran[a][1] <= ran[b][0] or ran[b][1] <= ran[a][0], ran
    reset = {e["event_data"]["host"]: e["event_data"]["res"]["ansible_facts"]
             for e in events if e.get("event") == "runner_on_ok"
             and e["event_data"].get("task") == "Note the agent restarted"}
    assert sorted(reset) == ["n1", "n2", "n3"]
    assert all(f["mesh_agent_switch_pending"] == "" and f["mesh_agent_restart_pending"] is False
               for f in reset.values())
