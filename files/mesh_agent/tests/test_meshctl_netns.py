"""meshctl against live agents: three real agent processes in namespaces (a triangle).

Each subcommand in both outputs, run inside a node's namespace with that node's own
config (so meshctl finds the API from ``api_listen``); a carrier cut shows up in
``meshctl events`` as ``link_down`` and ``failover``; the events survive a ``kill -9``
and a restart of the agent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from meshcore_testkit.agents import AgentMesh, agent_argv, agent_env, unit_limits
from meshcore_testkit.marks import requires_root
from meshcore_testkit.pki import CA
from meshcore_tools.netns import exec_argv, ip

pytestmark = requires_root

TRIANGLE = [(0, 1), (1, 2), (2, 0)]


@pytest.fixture
def mesh(tmp_path_factory: pytest.TempPathFactory, ca: CA) -> Iterator[AgentMesh]:
    with AgentMesh(3, TRIANGLE, tmp_path_factory.mktemp("ctl"), prefix="mct", ca=ca) as m:
        yield m


def meshctl(mesh: AgentMesh, i: int, *argv: str) -> tuple[int, str, str]:
    config = mesh.base / mesh.nodes[i].name / "agent.yml"
    res = subprocess.run(
        exec_argv(mesh.nodes[i].ns, sys.executable, "-m", "mesh_agent.ctl.main",
                  "--config", str(config), *argv),
        capture_output=True, text=True, timeout=60)
    return res.returncode, res.stdout, res.stderr


def test_every_subcommand_on_live_agents(mesh: AgentMesh) -> None:
    mesh.wait_for(mesh.converged, 60, "all agents ready with N-1 routes")
    code, out, err = meshctl(mesh, 0, "status")
    assert code == 0, err
    assert out.startswith("* n0 (") and "mode enforce" in out
    assert "Neighbours:  2 up (n1, n2)" in out
    s = json.loads(meshctl(mesh, 0, "--json", "status")[1])
    assert s["ready"] and s["destinations"] == 2 and s["installed"] == 2

    code, out, _ = meshctl(mesh, 0, "neighbours", "--expect", "n1,n2")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["n1", "n2"]
    assert meshctl(mesh, 0, "neighbours", "--expect", "n9")[0] == 1
    assert len(json.loads(meshctl(mesh, 0, "--json", "neighbours")[1])["neighbors"]) == 2

    def echo_on_both() -> bool:
        nbs = json.loads(meshctl(mesh, 0, "--json", "neighbours")[1])["neighbors"]
        return [n["echo_mode"] for n in nbs] == ["echo", "echo"]

    mesh.wait_for(echo_on_both, 10, "n0's neighbours in echo mode (their kernels answer)")
    header, *rows = meshctl(mesh, 0, "neighbours")[1].splitlines()
    assert [row[header.index("ECHO"):].split()[0] for row in rows] == ["echo", "echo"]

    code, out, _ = meshctl(mesh, 0, "routes")
    assert code == 0 and "mode enforce (routes are programmed in the kernel)" in out
    code, out, _ = meshctl(mesh, 0, "routes", "n1")
    assert code == 0 and "primary      n0 -> n1" in out and "backup       n0 -> n2 -> n1" in out
    one = json.loads(meshctl(mesh, 0, "--json", "routes", "n1")[1])
    assert one["backup_next_hop"] == "n2" and one["route"] is not None

    code, out, _ = meshctl(mesh, 0, "topology")
    assert code == 0 and out.startswith("n0: 3 nodes, 3 links")
    assert len(json.loads(meshctl(mesh, 0, "--json", "topology")[1])["edges"]) == 3
    code, out, _ = meshctl(mesh, 0, "plan")
    assert code == 0 and "0 bridges" in out
    assert json.loads(meshctl(mesh, 0, "--json", "plan")[1])["links"] == []

    code, out, _ = meshctl(mesh, 0, "identity")
    assert code == 0 and out.startswith("spiffe id     spiffe://mesh.lab/node/n0")
    assert json.loads(meshctl(mesh, 0, "--json", "identity")[1])["source"] == "files"

    # A carrier cut on n0's link to n1: link_down and a failover, in the table and as JSON.
    ip(mesh.nodes[0].ns, "link", "set", "dev", mesh.ifname[(0, 1)], "down")
    mesh.wait_for(lambda: "failover" in meshctl(mesh, 0, "events", "--since", "5m")[1], 20,
                  "a failover event on n0")
    code, out, _ = meshctl(mesh, 0, "events", "--since", "5m", "--kind", "link_down",
                           "--kind", "failover")
    kinds = [line.split()[2] for line in out.splitlines()]
    assert code == 0 and "link_down" in kinds and "failover" in kinds, out
    records = [json.loads(line) for line in meshctl(mesh, 0, "--json", "events")[1].splitlines()]
    failover = next(r for r in records if r["kind"] == "failover")
    assert failover["subject"] == "n1" and failover["detail"]["duration_seconds"] >= 0

    # kill -9 and a restart: the log still has the failover, and says how the last run ended.
    node = mesh.nodes[0]
    assert node.proc is not None
    node.proc.kill()
    node.proc.wait()
    code, _, err = meshctl(mesh, 0, "status")
    assert code == 3 and err.startswith("meshctl: cannot reach the agent at http://127.0.0.1:")
    config = mesh.base / node.name / "agent.yml"
    node.proc = mesh.lab.spawn(node.name, agent_argv(config), node.log,
                               preexec_fn=unit_limits, env=agent_env())
    mesh.wait_for(lambda: meshctl(mesh, 0, "status")[0] == 0, 30, "n0 ready again")
    records = [json.loads(line) for line in
               meshctl(mesh, 0, "--json", "events", "--limit", "200")[1].splitlines()]
    assert failover["id"] in [r["id"] for r in records]
    started = [r for r in records if r["kind"] == "agent_started"]
    assert started[-1]["reason"] == "after_crash", started
