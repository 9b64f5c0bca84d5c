"""The runner end to end on real namespaces, with static routes standing in for a routing daemon.

A diamond ``a - b - d``, ``a - c - d`` with static routes (protocol 77, as the
agent's) along one path: nothing fails over, so a fault on the path is an
outage for exactly as long as it holds — a known answer for the measurement.
Checked: the four steps and the chaostoolkit-compatible journal (schema),
the refusal to inject into an unhealthy mesh, and the rollback when the run
is interrupted twice (SIGINT) with the nodes' reapers not running, so the
runner's own rollback is what cleans up.

Nothing here is timed: a slow host makes every node call slower, so the tests
wait on conditions (with deadlines of a minute or more) and check the figures
against the journal's own timestamps and probe trace, never against a fixed
number of milliseconds.
"""

from __future__ import annotations

import copy
import datetime as dt
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
from meshcore_tools.chaos import runner as chaos_runner
from meshcore_tools.chaos.faults import Topo
from meshcore_tools.chaos.mesh import netns_mesh
from meshcore_tools.chaos.nodes import rollback as real_rollback
from meshcore_tools.chaos.runner import Runner

NODES = ["a", "b", "c", "d"]
LINKS = [("a", "b"), ("b", "d"), ("a", "c"), ("c", "d")]
EXP: dict[str, Any] = {
    "version": 1,
    "title": "silent cut on a static path",
    "seed": 3,
    "steady_state": {"timeout_s": 60},  # a deadline: a healthy mesh passes at once
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


def wall(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


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
    assert all(x["status"] == "succeeded" for x in doc["run"]), doc["run"]
    replies = [t for t, _ in doc["measurements"]["probe_traces"]["a->d"]]
    steps = doc["measurements"]["steps"]
    assert len(steps) == 2
    up_since = 0.0  # the probe's start, then the previous step's removal
    for s in steps:
        # Static routes never fail over: the flow is down for as long as the fault holds.
        # When that was is the journal's: from the end of the injection (both ends cut)
        # to the start of the removal. A slow host stretches the node calls, so this is
        # checked against those timestamps and the probe's trace, never a fixed figure.
        inj = next(x for x in doc["run"] if x["activity"]["name"].startswith("inject")
                   and x["activity"]["fault_id"] == s["fault_id"])
        cut_from, cut_to = wall(inj["end"]), s["removed_at"]
        out = s["recover_s"]["a->d"]
        assert out is not None, s  # the flow came back after the removal
        assert any(up_since <= t < s["injected_at"] for t in replies), s  # up before it
        assert not [t for t in replies if cut_from <= t < cut_to], s  # down while it held
        before = [t for t in replies if t < cut_from][-1]
        after = next(t for t in replies if t >= cut_to)  # the first reply after the removal
        # The figure is the whole outage around the fault (first loss to first success,
        # minus one ping interval; the trace is rounded to the millisecond), so at least
        # as long as the fault was certainly in place.
        assert out >= after - before - 0.01 - 0.003, (out, before, after, s)
        assert out >= cut_to - cut_from - 0.01, (out, cut_from, cut_to, s)
        assert s["reconverge_s"] is None  # a -> b is routed over the dead link the whole time
        assert s["reconverge_after_remove_s"] is not None, s  # every pair routed again
        up_since = cut_to
    assert lab.leftovers() == {}


@requires_root
def test_an_unhealthy_mesh_gets_no_fault(lab: ChaosLab) -> None:
    t = Topo(lab.state)
    netns.ip(lab.ns("b"), "route", "del", f"{t.address('c')}/32")
    # The route stays missing: no point in waiting long for the mesh to heal.
    r = runner(lab, {**EXP, "steady_state": {"timeout_s": 2}})
    doc = r.run().journal
    r.mesh.close()
    journal.check(doc)
    assert doc["status"] == "failed" and doc["run"] == [] and doc["rollbacks"] == []
    failed = [p for p in doc["steady_states"]["before"]["probes"] if not p["tolerance_met"]]
    assert [p["activity"]["name"] for p in failed] == ["all-pairs-routed-no-loops"]
    assert failed[0]["output"]["holes"] == 2  # b -> c, and d -> c through b
    assert not list((lab.base / "journal").glob("*/*.json"))


def wait_for_line(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until the runner's log (its stderr, in a file) has ``text``; it must not exit first."""
    end = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > end:
            raise AssertionError(f"no {text!r} in the runner's log (rc {proc.poll()}):\n"
                                 + path.read_text(errors="replace")[-3000:])
        time.sleep(0.05)


@requires_root
def test_two_interrupts_still_roll_back(lab: ChaosLab) -> None:
    """The controller as an operator runs it, started with SIGINT ignored as a background job
    of a script is (Python then never raises KeyboardInterrupt by itself): the first SIGINT
    comes once the fault is on, the second once the rollback has begun."""
    exp = copy.deepcopy(EXP)
    exp["faults"] = [{"class": "partition", "target": ["a"], "duration_s": 120.0},
                     {"class": "slow", "target": ["b", "d"], "duration_s": 120.0}]
    (lab.base / "exp.yml").write_text(yaml.safe_dump(exp))
    (lab.base / "state.json").write_text(json.dumps(lab.state))
    log = lab.base / "runner.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshcore_tools.chaos", "run", str(lab.base / "exp.yml"),
             "--netns-tag", lab.tag, "--state", str(lab.base / "state.json"),
             "--journal-root", str(lab.base / "journal"), "--out", str(lab.base / "out"),
             "--api", "none"],
            stdout=subprocess.DEVNULL, stderr=err,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        wait_for_line(log, "step 0: partition:a", proc, 120)  # injected on a, b and c
        assert set(lab.leftovers()) == {"a", "b", "c"}
        proc.send_signal(signal.SIGINT)
        wait_for_line(log, "interrupted: rolling back 3 node(s)", proc, 120)
        proc.send_signal(signal.SIGINT)  # the one chaostoolkit loses its rollbacks to
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    doc = json.loads((lab.base / "out" / "exp.journal.json").read_text())
    journal.check(doc)
    assert doc["status"] == "interrupted", log.read_text()[-2000:]
    # The partition of a cut a - b and a - c: three nodes carry a part of it.
    assert {x["activity"]["name"] for x in doc["rollbacks"]} == {"rollback a", "rollback b",
                                                                  "rollback c"}
    assert all(x["status"] == "succeeded" for x in doc["rollbacks"]), doc["rollbacks"]
    assert [x["activity"]["name"] for x in doc["run"]] == ["inject partition:a"]  # no step 1
    assert lab.leftovers() == {}  # no reaper runs in this lab: the rollback did it


@requires_root
def test_an_interrupt_inside_the_rollback_is_ignored(lab: ChaosLab,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, with the interrupts raised where they hurt: the first while the fault
    holds, the second from inside the rollback's own node calls."""
    exp = copy.deepcopy(EXP)
    exp["faults"] = [{"class": "silent_cut", "target": ["a", "b"], "duration_s": 120.0}]
    seen: list[int] = []

    def interrupted_while_held(self: Runner, *args: Any) -> Any:
        assert set(lab.leftovers()) == {"a", "b"}  # the fault is on
        signal.raise_signal(signal.SIGINT)  # handled before raise_signal returns
        raise AssertionError("the first interrupt did not stop the run")

    def interrupted_rollback(nodes: Any, names: Any) -> Any:
        signal.raise_signal(signal.SIGINT)  # ignored: counted only
        handler = signal.getsignal(signal.SIGINT)
        assert isinstance(handler, chaos_runner.Interrupts)
        seen.append(handler.received)
        return real_rollback(nodes, names)

    monkeypatch.setattr(Runner, "_reconverge", interrupted_while_held)
    monkeypatch.setattr(chaos_runner, "rollback", interrupted_rollback)
    before = signal.getsignal(signal.SIGINT)
    r = runner(lab, exp)
    doc = r.run().journal
    r.mesh.close()
    journal.check(doc)
    assert seen == [2]  # both interrupts reached the run's handler
    assert signal.getsignal(signal.SIGINT) is before  # restored
    assert doc["status"] == "interrupted"
    assert {x["activity"]["name"] for x in doc["rollbacks"]} == {"rollback a", "rollback b"}
    assert all(x["status"] == "succeeded" for x in doc["rollbacks"]), doc["rollbacks"]
    assert lab.leftovers() == {}


def test_interrupts_raise_once_then_count() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with chaos_runner.interrupts() as intr:
        assert intr is not None
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
        assert intr.received == 3 and not intr.armed
        with chaos_runner.interrupts() as inner:  # nested: the outer handler stays
            assert inner is intr
    assert signal.getsignal(signal.SIGTERM) is before


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


@requires_root
def test_a_refused_injection_is_skipped_with_the_nodes_reason(lab: ChaosLab) -> None:
    """No systemd unit runs in these namespaces: a runaway_unit step is refused by the node,
    and the step says what the node said, not only that it refused."""
    exp = {**EXP, "faults": [{"class": "runaway_unit", "target": ["b"], "duration_s": 1.0,
                              "settle_s": 0.5, "params": {"unit": "nothere.service"}}]}
    r = runner(lab, exp)
    doc = r.run().journal
    r.mesh.close()
    journal.check(doc)
    [step] = doc["measurements"]["steps"]
    assert step["skipped"].startswith("injection refused: ")
    assert "nothere.service has no process" in step["skipped"], step
