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

import yaml
from meshcore_tools import ROOT
from test_rollout_gate_tasks import assert_path_rounds_ran_apart, run_play


def test_running_agents_restart_in_rounds_of_nodes_that_share_no_neighbour(
        tmp_path: Path) -> None:
    """A path n1-n2-n3-n4-n5; n6 waits too but its neighbours could not be read; n7's
    agent needs no restart (or was not running: the role started it at once). The rounds
    are [n3], [n6], [n2, n5], [n1, n4]; n7 is never restarted."""
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
    assert set(post) - {read} == {"Name the nodes for the restart rounds",
                                  "Plan the agent restart rounds",
                                  "Restart the agents, one round of nodes that share no "
                                  "neighbour at a time"}
    plays = [{"name": "restart rounds", "hosts": "mesh_nodes", "gather_facts": False,
              "vars": {"fake": nbrs, "mesh_agent_node_name": "node-{{ inventory_hostname }}"},
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
                          replace={"tasks/agent-restart.yml": yaml.safe_dump(stand_in)})
    assert rc == 0, [e.get("stdout") for e in events][-10:]
    (planned,) = {json.dumps(e["event_data"]["res"]["ansible_facts"]["mesh_node_restart_rounds"])
                  for e in events if e.get("event") == "runner_on_ok"
                  and e["event_data"].get("task") == "Plan the agent restart rounds"}
    assert json.loads(planned) == [["n3"], ["n6"], ["n2", "n5"], ["n1", "n4"]]
    ran = {h: (t0, t1) for h, t0, t1 in
           (json.loads(line) for line in log.read_text().splitlines())}
    assert sorted(ran) == hosts[:6] and len(log.read_text().splitlines()) == 6
    assert_path_rounds_ran_apart(ran)
