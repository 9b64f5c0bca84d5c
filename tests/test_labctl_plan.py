"""labctl's plan stamp: a lab left up by another checkout or plan is never reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
import yaml
from meshcore_tools.lab import plan as labctl


def _podman_ps(lines: list[str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    def fake_sh(
        *argv: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        assert argv[:3] == ("podman", "ps", "-a")
        return subprocess.CompletedProcess(list(argv), 0, stdout="".join(f"{x}\n" for x in lines))
    return fake_sh


def test_plan_id_depends_on_plan_and_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"name": "grid-4", "nodes": {"node01": {}}, "links": []}
    monkeypatch.setenv("MESHCORE_CHECKOUT_ID", "aaaaaa")
    a = labctl.plan_id(state)
    assert a == labctl.plan_id(dict(state))
    assert a != labctl.plan_id({**state, "name": "grid-5"})
    monkeypatch.setenv("MESHCORE_CHECKOUT_ID", "bbbbbb")
    assert a != labctl.plan_id(state)


def test_foreign_containers_are_those_of_another_plan_or_unstamped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labctl, "sh", _podman_ps([
        "meshcore-lab-node01\tcafe01",
        "meshcore-lab-node02\tbeef02",
        "meshcore-lab-node03\t",          # started before containers were stamped
    ]))
    assert labctl.foreign_containers("cafe01") == {
        "meshcore-lab-node02": "beef02", "meshcore-lab-node03": "unknown"}


def test_no_foreign_containers_when_all_match(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labctl, "sh", _podman_ps(["meshcore-lab-node01\tcafe01"]))
    assert labctl.foreign_containers("cafe01") == {}
    monkeypatch.setattr(labctl, "sh", _podman_ps([]))
    assert labctl.foreign_containers("cafe01") == {}


# -- the gateways group (etcd members, the MAPE-K loop's leases) -------------------------
def _state(kind: str, n: int) -> dict[str, Any]:
    from meshcore_tools.lab import topology as topo

    state = topo.normalise(topo.build(kind, n, 1))
    state["monitor"] = {"name": "monitor01", "mgmt_address": "10.203.0.2"}
    return state


def _graph(state: dict[str, Any]) -> nx.Graph:
    return nx.Graph((n, link["peer"]) for n, node in state["nodes"].items()
                    for link in node["links"])


@pytest.mark.parametrize(("kind", "n"), [("grid", 10), ("ladder", 12), ("rgg", 30), ("grid", 50)])
def test_three_gateways_spread_over_the_mesh(kind: str, n: int) -> None:
    state = _state(kind, n)
    gateways = labctl.pick_gateways(state)
    assert len(gateways) == 3 == len(set(gateways)) and set(gateways) <= set(state["nodes"])
    assert gateways == labctl.pick_gateways(state)  # the same plan, the same group
    g = _graph(state)
    # Farthest-first: no two gateways are neighbours on a mesh wider than 2 hops.
    assert all(nx.shortest_path_length(g, a, b) >= 2
               for a in gateways for b in gateways if a < b)
    assert labctl.pick_gateways(_state("grid", 2)) == ["node01", "node02"]


def test_the_inventory_has_the_gateways_and_the_agents_get_their_endpoints(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """labctl writes the group; role-vars.yml turns it into every agent's etcd endpoints,
    whether the loop is on or off (so ``meshctl lease check`` can try them before it is
    turned on), and into the commit-confirm's reach targets: the *other* gateways, unless
    the site config names its own (rendered by ansible-playbook)."""
    from meshcore_tools import ROOT

    state = _state("grid", 10)
    state["name"] = "grid-10"
    inventory = tmp_path / "inv" / "hosts.yml"
    monkeypatch.setattr(labctl, "INVENTORY", inventory)
    labctl.write_inventory(state)
    children = yaml.safe_load(inventory.read_text())["all"]["children"]
    gateways = list(children["gateways"]["hosts"])
    assert gateways == labctl.pick_gateways(state)
    assert set(gateways) <= set(children["mesh_nodes"]["hosts"])
    plain = next(n for n in sorted(state["nodes"]) if n not in gateways)
    out = tmp_path / "out"
    play = tmp_path / "play.yml"
    play.write_text(yaml.safe_dump([{
        "hosts": f"{plain},{gateways[0]}", "connection": "local", "gather_facts": False,
        "vars_files": [str(ROOT / "playbooks/site-config/role-vars.yml")],
        "tasks": [{"ansible.builtin.copy": {
            "content": "{{ {'endpoints': mesh_agent_mapek_lease_endpoints, "
                       "'reach': mesh_agent_confirm_reach} | to_json }}",
            "dest": str(out) + "-{{ run }}-{{ inventory_hostname }}.json"},
            "delegate_to": "localhost"}]}]))
    sites = {"derived": {"release": {}}, "own": {"release": {"confirm_reach": ["10.99.0.1:22"]}},
             "none": {"release": {"confirm_reach": []}}, "bare": {}}
    for run, site in sites.items():
        proc = subprocess.run(
            [str(ROOT / ".venv/bin/ansible-playbook"), "-i", str(inventory), str(play),
             "-e", json.dumps({"run": run, "site": site}),
             "-e", "ansible_python_interpreter=" + sys.executable],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def got(run: str, host: str) -> dict[str, list[str]]:
        data: dict[str, list[str]] = json.loads(Path(f"{out}-{run}-{host}.json").read_text())
        return data

    addr = {g: state["nodes"][g]["node_address"] for g in gateways}
    want = [f"https://{addr[g]}:2379" for g in gateways]
    for host in (plain, gateways[0]):
        assert got("derived", host)["endpoints"] == want
        assert got("own", host)["reach"] == ["10.99.0.1:22"]
        assert got("none", host)["reach"] == []
    assert got("derived", plain)["reach"] == [addr[g] for g in gateways]
    assert got("bare", plain)["reach"] == [addr[g] for g in gateways]
    assert got("derived", gateways[0])["reach"] == [addr[g] for g in gateways[1:]]
