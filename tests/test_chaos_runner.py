"""The runner end to end on real namespaces, with static routes standing in for a routing daemon.

A diamond ``a - b - d``, ``a - c - d`` with static routes (protocol 77, as the
agent's) along one path: nothing fails over, so a fault on the path is an
outage for exactly as long as it holds — a known answer for the measurement.
Checked: the four steps and the chaostoolkit-compatible journal (schema),
the refusal to inject into an unhealthy mesh, and the rollback when the run
is interrupted twice (SIGINT) with the nodes' reapers not running, so the
runner's own rollback is what cleans up.
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import networkx as nx
import pytest
import yaml
from meshcore_testkit.chaoslab import ChaosLab
from meshcore_testkit.marks import requires_root
from meshcore_tools import netns
from meshcore_tools.chaos import experiment, journal
from meshcore_tools.chaos.faults import Topo
from meshcore_tools.chaos.mesh import netns_mesh
from meshcore_tools.chaos.runner import Runner

NODES = ["a", "b", "c", "d"]
LINKS = [("a", "b"), ("b", "d"), ("a", "c"), ("c", "d")]
EXP: dict[str, Any] = {
    "version": 1,
    "title": "silent cut on a static path",
    "seed": 3,
    "steady_state": {"timeout_s": 2},
    "faults": [{"class": "silent_cut", "target": ["a", "b"], "duration_s": 1.0,
                "repetitions": 2, "settle_s": 0.5}],
    "probes": [{"src": "a", "dst": "d"}],
}


def static_routes(lab: ChaosLab) -> list[tuple[str, str]]:
    """Routes along a - b - d for every pair; returns (node, route) as added."""
    t = Topo(lab.state)
    g = nx.Graph([("a", "b"), ("b", "d"), ("a", "c"), ("c", "d")])
    g.remove_edge("c", "d")  # one path only: a - b - d, with c hanging off a
    added = []
    for src in NODES:
        for dst, path in nx.single_source_shortest_path(g, src).items():
            if dst == src:
                continue
            via = str(t.end(path[1], src)["address"]).split("/")[0]
            netns.ip(lab.ns(src), "route", "add", f"{t.address(dst)}/32", "via", via,
                     "proto", "77")
            added.append((src, t.address(dst)))
    return added


@pytest.fixture()
def lab(tmp_path: Path) -> Iterator[ChaosLab]:
    with ChaosLab(NODES, LINKS, tmp_path, prefix="mcu", reapers=False) as lab:
        static_routes(lab)  # node addresses on lo: netns.wire put them there
        yield lab


def runner(lab: ChaosLab, exp: dict[str, Any]) -> Runner:
    mesh = netns_mesh(lab.state, lab.ns, lab.base / "journal", api=None)
    return Runner(experiment.validate(copy.deepcopy(exp)), mesh, name="t")


@requires_root
def test_a_run_injects_measures_removes_and_journals(lab: ChaosLab) -> None:
    r = runner(lab, EXP)
    doc = r.run().journal
    r.mesh.close()
    journal.check(doc)
    assert doc["status"] == "completed" and doc["deviated"] is False, doc["steady_states"]
    assert doc["steady_states"]["before"]["steady_state_met"]
    assert doc["steady_states"]["after"]["steady_state_met"]
    names = [x["activity"]["name"] for x in doc["run"]]
    assert names == ["inject silent_cut:a-b", "remove silent_cut:a-b"] * 2
    steps = doc["measurements"]["steps"]
    for s in steps:
        # Static routes never fail over: the flow is down for as long as the fault holds.
        out = s["recover_s"]["a->d"]
        held = s["removed_at"] - s["injected_at"]  # the 1 s hold plus the node calls
        assert 0.9 <= out <= held + 1.0, s  # + the removal's own calls (slow under load)
        assert s["reconverge_s"] is None  # a -> b is routed over the dead link the whole time
        assert s["reconverge_after_remove_s"] is not None and s["reconverge_after_remove_s"] < 1
    assert lab.leftovers() == {}


@requires_root
def test_an_unhealthy_mesh_gets_no_fault(lab: ChaosLab) -> None:
    t = Topo(lab.state)
    netns.ip(lab.ns("b"), "route", "del", f"{t.address('c')}/32")
    r = runner(lab, EXP)
    doc = r.run().journal
    r.mesh.close()
    journal.check(doc)
    assert doc["status"] == "failed" and doc["run"] == [] and doc["rollbacks"] == []
    failed = [p for p in doc["steady_states"]["before"]["probes"] if not p["tolerance_met"]]
    assert [p["activity"]["name"] for p in failed] == ["all-pairs-routed-no-loops"]
    assert failed[0]["output"]["holes"] == 2  # b -> c, and d -> c through b
    assert not list((lab.base / "journal").glob("*/*.json"))


@requires_root
def test_two_interrupts_still_roll_back(lab: ChaosLab) -> None:
    exp = copy.deepcopy(EXP)
    exp["faults"] = [{"class": "partition", "target": ["a"], "duration_s": 30.0},
                     {"class": "slow", "target": ["b", "d"], "duration_s": 30.0}]
    (lab.base / "exp.yml").write_text(yaml.safe_dump(exp))
    (lab.base / "state.json").write_text(json.dumps(lab.state))
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshcore_tools.chaos", "run", str(lab.base / "exp.yml"),
         "--netns-tag", lab.tag, "--state", str(lab.base / "state.json"),
         "--journal-root", str(lab.base / "journal"), "--out", str(lab.base / "out"),
         "--api", "none"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not lab.wait(lambda: bool(list((lab.base / "journal").glob("*/*.json"))), 20):
        proc.kill()
        raise AssertionError(proc.communicate()[1][-3000:])
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # the one chaostoolkit loses its rollbacks to
    _, err = proc.communicate(timeout=60)
    doc = json.loads((lab.base / "out" / "exp.journal.json").read_text())
    journal.check(doc)
    assert doc["status"] == "interrupted", err[-2000:]
    # The partition of a cut a - b and a - c: three nodes carry a part of it.
    assert {x["activity"]["name"] for x in doc["rollbacks"]} == {"rollback a", "rollback b",
                                                                  "rollback c"}
    assert lab.leftovers() == {}  # no reaper runs in this lab: the rollback did it


def test_the_journal_schema_rejects_what_chaostoolkit_could_not_read() -> None:
    doc = journal.JournalBuilder({"title": "x"}).finish("completed", False)
    doc["steady_states"]["before"] = {"steady_state_met": True, "probes": []}
    journal.check(doc)
    for key, bad in (("status", "done"), ("deviated", "no"), ("run", {}), ("rollbacks", None)):
        broken = copy.deepcopy(doc)
        broken[key] = bad
        with pytest.raises(jsonschema.ValidationError):
            journal.check(broken)
    broken = copy.deepcopy(doc)
    broken["run"] = [{"activity": {"type": "action"}, "status": "succeeded"}]
    with pytest.raises(jsonschema.ValidationError):
        journal.check(broken)
    del doc["steady_states"]
    with pytest.raises(jsonschema.ValidationError):
        journal.check(doc)


def test_experiments_are_checked_against_their_schema_and_blast_radius() -> None:
    assert experiment.validate(copy.deepcopy(EXP))["blast_radius"]["max_nodes"] == 25
    for change in ({"faults": [{"class": "meteor"}]}, {"version": 2}, {"extra": 1},
                   {"faults": [{"class": "slow", "duration_s": 500}]}):
        with pytest.raises(experiment.ExperimentError):
            experiment.validate({**copy.deepcopy(EXP), **change})


def test_the_shipped_experiments_validate_and_schedule_reproducibly() -> None:
    from meshcore_tools.lab import topology

    topo = Topo(topology.normalise(topology.build("rgg", 50, seed=1)))
    files = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yml"))
    assert files
    for f in files:
        exp = experiment.load(f)
        assert experiment.schedule(exp, topo) == experiment.schedule(experiment.load(f), topo)
