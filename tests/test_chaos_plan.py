"""The fault plans and the reaper's decision, with no network (plain data in and out)."""

from __future__ import annotations

import random

import pytest
from meshcore_chaos.node import reaper
from meshcore_chaos.node.journal import Entry
from meshcore_tools.chaos import faults
from meshcore_tools.chaos.faults import Fault, FaultError, Topo
from meshcore_tools.lab import topology


@pytest.fixture(scope="module")
def topo() -> Topo:
    return Topo(topology.normalise(topology.build("rgg", 20, seed=3)))


def test_every_class_plans_owned_operations_only(topo: Topo) -> None:
    rng = random.Random(1)
    for cls, info in faults.CLASSES.items():
        target = faults.pick_target(cls, topo, rng)
        params = {"unit": "app.service"} if cls == "runaway_unit" else {}
        plan = faults.plan(Fault(cls, target, "f1", params), topo)
        assert plan, cls
        for node, ops in plan.items():
            assert node in topo.state["nodes"]
            for op in ops:
                if op["op"] == "nft":
                    assert op["table"] == "meshcore_chaos_f1"
                if op["op"] == "spawn":
                    assert "meshcore_chaos:f1" in op["argv"]
        assert info.hardware


def test_link_faults_touch_both_ends_but_link_down_one(topo: Topo) -> None:
    a, b = sorted(topo.graph.edges)[0]
    assert set(faults.plan(Fault("silent_cut", (a, b), "x"), topo)) == {a, b}
    assert set(faults.plan(Fault("slow", (a, b), "x"), topo)) == {a, b}
    assert set(faults.plan(Fault("link_down", (a, b), "x"), topo)) == {a}


def test_partition_cuts_exactly_the_links_across(topo: Topo) -> None:
    side = faults.bisect(topo, seed=4)
    plan = faults.plan(Fault("partition", side, "p"), topo)
    across = [(a, b) for a, b in topo.graph.edges if (a in side) != (b in side)]
    chains = sum(op["body"].count("chain ") for ops in plan.values() for op in ops)
    assert chains == 2 * len(across)
    assert faults.bisect(topo, seed=4) == side  # seeded: reproducible


@pytest.mark.parametrize("seed", range(6))
def test_partition_halves_leave_excluded_nodes_uncut(seed: int) -> None:
    """blast_radius.exclude is honoured when the halves are chosen: no excluded node has a
    link cut (so the runner does not skip the step), on topologies of several shapes."""
    t = Topo(topology.normalise(topology.build(("rgg", "grid", "community")[seed % 3], 16,
                                               seed=seed)))
    nodes = sorted(t.graph)
    exclude = random.Random(seed).sample(nodes, 2)
    side = faults.bisect(t, seed, exclude)
    assert 0 < len(side) < len(nodes)
    touched = set(faults.plan(Fault("partition", side, "p"), t))
    assert touched and not touched & set(exclude)
    assert faults.bisect(t, seed, exclude) == side  # still seeded


def test_partition_schedule_passes_the_exclusions(topo: Topo) -> None:
    from meshcore_tools.chaos import experiment
    exclude = sorted(topo.graph)[:3]
    exp = experiment.validate({
        "version": 1, "title": "t", "seed": 5, "steady_state": {"timeout_s": 10},
        "blast_radius": {"max_nodes": 80, "max_duration_s": 60, "exclude": exclude},
        "faults": [{"class": "partition", "target": "random", "duration_s": 5,
                    "settle_s": 1, "repetitions": 4}]})
    for step in experiment.schedule(exp, topo):
        assert not set(faults.plan(Fault("partition", step.target, "p"), topo)) & set(exclude)


@pytest.mark.parametrize(("cls", "target", "params"), [
    ("silent_cut", ("n01",), {}), ("lossy", None, {"loss_pct": 0}), ("frozen_agent", ("zz",), {}),
    ("cpu_starvation", None, {"quota_pct": 100}), ("nope", ("n01",), {}),
    ("runaway_unit", None, {}), ("runaway_unit", None, {"unit": "a b.service"}),
    ("runaway_unit", None, {"unit": "app.service", "cpu": -1}),
    ("runaway_unit", None, {"unit": "app.service", "seconds": 0}),
])
def test_bad_faults_are_refused(topo: Topo, cls: str, target: tuple[str, ...] | None,
                                params: dict[str, object]) -> None:
    if target is None:
        target = faults.pick_target(cls, topo, random.Random(0))
    with pytest.raises(FaultError):
        faults.plan(Fault(cls, target, "x", params), topo)


def test_a_runaway_unit_pins_the_agent_then_spawns_the_tagged_loop(topo: Topo) -> None:
    node = faults.pick_target("runaway_unit", topo, random.Random(0))
    plan = faults.plan(Fault("runaway_unit", node, "r1", {"unit": "app.service", "cpu": 1,
                                                          "seconds": 90}), topo)
    assert list(plan) == list(node)
    pin, spawn = plan[node[0]]
    assert pin == {"op": "affinity", "match": faults.AGENT_MATCH, "cpus": [1]}
    assert spawn["op"] == "spawn" and spawn["ready_s"] > 0  # a refusal is said at injection
    assert spawn["argv"][1:] == ["-m", "meshcore_chaos.node.runaway", "--tag",
                                 "meshcore_chaos:r1", "--unit", "app.service", "--cpu", "1",
                                 "--seconds", "90"]


def entry(fid: str, deadline: float, boot: str = "b1") -> Entry:
    return Entry(fid, "e", "silent_cut", deadline, boot, 0.0)


def test_reaper_takes_what_is_past_its_deadline_or_from_another_boot() -> None:
    es = [entry("late", 10.0), entry("future", 30.0), entry("old-boot", 99.0, boot="b0")]
    assert [(d.id, d.reason) for d in reaper.due(es, 20.0, "b1")] == [
        ("late", "deadline"), ("old-boot", "reboot")]
    assert reaper.next_wakeup(es[1:2], 20.0, 0.5) == 0.5
    assert reaper.next_wakeup(es[1:2], 29.9, 0.5) == pytest.approx(0.1)


def test_deadlines_are_bounded() -> None:
    assert reaper.check_deadline(5.0, 10.0)
    assert reaper.check_deadline(10.0 + reaper.MAX_DURATION_S + 1, 10.0)
    assert reaper.check_deadline(70.0, 10.0) is None


def test_probe_figures_from_a_ping_transcript() -> None:
    from meshcore_tools.chaos import probes

    lines = [f"[{100 + 0.016 * i:.6f}] 64 bytes from 10.77.0.2: icmp_seq={i} ttl=63 time=0.2 ms"
             for i in range(200) if not 50 <= i < 80]  # 30 lost: 0.48 s without a reply
    tr = probes.parse("\n".join(lines) + "\n200 packets transmitted, 170 received, 15% loss")
    assert tr.sent == 200 and tr.received == 170
    # first loss to first success: the gap 49 -> 80 (31 intervals) minus one ping interval
    assert abs(probes.recover_s(tr, 100.8, 101.5) - (31 * 0.016 - 0.01)) < 1e-6
    # nothing lost: one sending gap (about 16 ms here) minus the 10 ms interval
    assert probes.recover_s(tr, 102.0, 103.0) < 0.016
    assert probes.heal_s(tr, 100.9) > 0.3 and probes.heal_s(tr, 102.0) == 0.0
    lv = probes.service_levels(tr)
    assert lv.loss_pct == 15.0 and lv.latency_p95_ms == 0.2 and not lv.ok()


def test_a_not_ready_agent_says_why_and_a_timeout_is_not_a_503() -> None:
    from meshcore_tools.chaos.mesh import not_ready_why

    assert not_ready_why(0, "") == {"code": 0, "failing": ["no answer within 2 s"]}
    body = ('{"ready": false, "checks": {"neighbors_known": true, "paths_current": false},'
            ' "failing": ["paths_current"], "detail": {"paths_pending_seconds": 0.3}}')
    assert not_ready_why(503, body) == {"code": 503, "failing": ["paths_current"],
                                        "detail": {"paths_pending_seconds": 0.3}}
    # An agent from before ``failing`` existed: the failing checks are read from ``checks``.
    old = '{"ready": false, "checks": {"neighbors_known": true, "routes_programmed": false}}'
    assert not_ready_why(503, old)["failing"] == ["routes_programmed"]
    assert not_ready_why(502, "<html>")["failing"] == ["unreadable body"]


def test_the_fleet_runner_reaches_nodes_as_ansible_does() -> None:
    """``chaos run --inventory`` sshes as ansible_user, to ansible_port, at ansible_host."""
    from meshcore_tools.chaos.__main__ import fleet_ssh
    ssh = fleet_ssh({"_meta": {"hostvars": {
        "n1": {"ansible_host": "10.0.0.1", "ansible_user": "pi", "ansible_port": 2222},
        "n2": {"ansible_host": "n2.lan"}}}})
    assert ssh("n1") == ["ssh", "-o", "BatchMode=yes", "-l", "pi", "-p", "2222", "10.0.0.1",
                         "sudo"]
    assert ssh("n2") == ["ssh", "-o", "BatchMode=yes", "n2.lan", "sudo"]
    assert ssh("n3") == ["ssh", "-o", "BatchMode=yes", "n3", "sudo"]


def test_a_process_whose_namespace_cannot_be_read_is_ours_where_init_shares_ours(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Root in a podman container may not read the hardened agent's /proc ns link (no
    CAP_SYS_PTRACE); the container's processes all share its namespace, a netns lab
    host's do not."""
    import os

    from meshcore_chaos.node import ops

    real_stat = os.stat

    def stat(path: str, *a: object, **k: object) -> os.stat_result:
        if path == "/proc/4242/ns/net":
            raise PermissionError(13, "Permission denied", path)
        return real_stat(path)

    monkeypatch.setattr(os, "stat", stat)
    for shares in (True, False):
        monkeypatch.setattr(ops, "_init_shares_netns", lambda s=shares: s)
        assert ops.same_netns(4242) is shares
    monkeypatch.setattr(ops, "_init_shares_netns", lambda: True)
    assert ops.same_netns(2**22 + 7) is False  # no such process: not ours
