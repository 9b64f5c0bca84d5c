"""The self-healing loop inside an Agent fed by hand: no sockets, no sleeps, a fake clock.

Neighbour b's hellos arrive with half of them missing; the loop's timer tick
(``MapekShell.tick``, called by hand) opens an incident, raises b's cost in
our advert (enforce), and, once b's hellos all arrive again, records the
recovery with its MTTR and releases the cost after the damping's hold.
Read back through ``/v1/incidents``, ``meshctl incidents``, the metrics and
the event log.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from meshcore_testkit.inprocess import adverts_with_b, compute, meet_b
from meshcore_testkit.pki import CA, TRUST_DOMAIN, PairKeysForTests
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from mesh_agent.agent import Agent
from mesh_agent.api import create_app
from mesh_agent.config import IdentityConfig, parse_config
from mesh_agent.ctl import main as ctl
from mesh_agent.identity import Identity
from mesh_agent.link.sensor import LinkSensor
from mesh_agent.mapek import Knowledge
from mesh_agent.mapek.execute import QUARANTINE_COST
from mesh_agent.mapek.loop import Charge, Step
from mesh_agent.mapek.monitor import DEFAULT_BOUNDS, Signal
from mesh_agent.store import EventKind, EventLog

T0 = 1000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make_agent(ca: CA, tmp_path: Path, clock: Clock, mapek: dict[str, Any],
               identity: Identity | None = None) -> Agent:
    cfg = parse_config({"node_name": "a", "node_address": "10.77.0.1", "mode": "observe",
                        "state_dir": str(tmp_path), "mapek": mapek})
    events = EventLog.in_state_dir(tmp_path, boot_id="boot-a", clock=clock)
    knowledge = Knowledge.in_state_dir(tmp_path) if mapek.get("enabled") else None
    agent = Agent(cfg, identity or ca.identity("a", "10.77.0.1"), clock=clock, events=events,
                  knowledge=knowledge, cpu=lambda: 0.0)
    agent.sensor.keys = PairKeysForTests("a")
    return agent


def hellos(agent: Agent, b: LinkSensor, clock: Clock, seconds: float, keep_every: int) -> None:
    """Hellos both ways over ``seconds`` (one per 50 ms); the agent gets every
    ``keep_every``-th of b's, b gets all of the agent's."""
    for i in range(int(seconds / 0.05)):
        clock.now += 0.05
        b.receive("mesh0", agent.sensor.build_hello("mesh0", clock.now), "10.98.0.0", clock.now)
        data = b.build_hello("mesh0", clock.now)
        if i % keep_every == 0:
            agent.sensor.receive("mesh0", data, "10.98.0.1", clock.now)


def ready_and_armed(agent: Agent, ca: CA, clock: Clock) -> LinkSensor:
    """b met, both adverts in, paths computed (the node is ready); clean hellos until the
    loop has been ready for its settling time and arms."""
    b = meet_b(agent, clock.now)
    adverts_with_b(agent, ca, clock.now)
    compute(agent)
    assert agent.view.ready() and agent.mapek is not None and not agent.mapek.core.armed
    for _ in range(5):  # 20 s of a clean link after the first tick: past START_SETTLE_S
        hellos(agent, b, clock, 5.0, keep_every=1)
        agent.mapek.tick()
    assert agent.mapek.core.armed
    return b


def own_cost_to_b(agent: Agent) -> float:
    own = agent.topology.lsdb.entries()["a"].advert
    return dict(own.links)["b"]


def metrics(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(client.get("/metrics").text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def meshctl_in_process(monkeypatch: pytest.MonkeyPatch, client: TestClient) -> None:
    """meshctl's HTTP client answered by the agent's app in-process (``--api`` is ignored)."""

    class Via:
        def __init__(self, url: str, timeout: float = 5.0) -> None:
            pass

        def get(self, path: str, params: Any = ()) -> tuple[int, Any]:
            r = client.get(path, params=list(params))
            return r.status_code, r.json()

    monkeypatch.setattr(ctl, "HttpClient", Via)


@pytest.fixture
def enforced(ca: CA, tmp_path: Path) -> tuple[Agent, Clock, TestClient, LinkSensor]:
    clock = Clock()
    agent = make_agent(ca, tmp_path, clock, {"enabled": True, "mode": "enforce",
                                             "interval_s": 5})
    b = ready_and_armed(agent, ca, clock)
    return agent, clock, TestClient(create_app(agent.view, agent.metrics.registry,
                                               agent.events)), b


def test_nothing_is_analyzed_before_the_node_is_ready_and_settled(ca: CA,
                                                                   tmp_path: Path) -> None:
    clock = Clock()
    agent = make_agent(ca, tmp_path, clock, {"enabled": True, "mode": "enforce"})
    b = meet_b(agent, clock.now)
    for _ in range(4):  # a lossy link, but no advert and no paths yet: not ready
        hellos(agent, b, clock, 5.0, keep_every=2)
        agent.mapek.tick()
    assert not agent.view.ready() and agent.mapek is not None and not agent.mapek.core.armed
    assert agent.view.incidents()["incidents"] == [] and agent.sensor.penalties == {}
    assert agent.view.incidents()["armed"] is False


def test_a_lossy_link_is_quarantined_released_and_recorded(enforced) -> None:
    agent, clock, client, b = enforced
    assert own_cost_to_b(agent) == 1.0
    # Half of b's hellos lost, for four loop ticks.
    for _ in range(4):
        hellos(agent, b, clock, 5.0, keep_every=2)
        agent.mapek.tick()
    assert agent.sensor.penalties == {"b": QUARANTINE_COST}
    # The quarantine on top of the link's own cost when it was applied (its loss over the
    # last 256 hellos, the clean ones before included: 30-50 %).
    assert 4.0 <= own_cost_to_b(agent) - QUARANTINE_COST <= 6.0
    [inc] = client.get("/v1/incidents", params={"open": "true"}).json()["incidents"]
    assert inc["class"] == "lossy_link" and inc["target"] == "link:b"
    assert inc["action"] == {"kind": "quarantine_link", "outcome": "applied"}
    assert inc["state"] == "open" and inc["mttr_seconds"] is None
    assert [a["kind"] for a in client.get("/v1/incidents").json()["active_actions"]] == [
        "quarantine_link"]
    # b is clean again: recovered first, the cost released after the damping's hold.
    released_at = None
    for _ in range(30):
        hellos(agent, b, clock, 5.0, keep_every=1)
        agent.mapek.tick()
        if released_at is None and not agent.sensor.penalties:
            released_at = clock.now
    assert released_at is not None and own_cost_to_b(agent) == 1.0
    body = client.get("/v1/incidents").json()
    [inc] = body["incidents"]
    assert inc["state"] == "recovered" and inc["mttr_seconds"] > 0
    # Its one route (to b) crossed the link and had no detour: never mitigated.
    assert (inc["carried"], inc["time_to_mitigate_seconds"]) == (1, None)
    assert body["active_actions"] == [] and body["mode"] == "enforce"
    assert inc["detected_mono"] < inc["recovered_mono"] < released_at
    # What the loop learned from it: the quarantine (the rule) did not move the route in
    # time, so it counts as a failure for the class.
    assert body["action_stats"] == [{
        "class": "lossy_link", "action": "quarantine_link", "tries": 1, "successes": 0,
        "failures": 1, "mean_mttr_seconds": pytest.approx(inc["mttr_seconds"], abs=1e-3),
        "rule": True}]
    # The same story in the event log and the metrics.
    rem = agent.events.query(kinds=[EventKind.REMEDIATION])
    assert [(e.subject, e.reason) for e in rem] == [
        ("link:b", "apply:quarantine_link"), ("link:b", "undo:quarantine_link")]
    assert rem[1].detail["reason"] == "released"
    m = metrics(client)
    assert m[("meshcore_incidents_total", (("class", "lossy_link"),))] == 1
    assert m[("meshcore_mttr_seconds_count", (("class", "lossy_link"),))] == 1
    assert m[("meshcore_mttr_seconds_sum", (("class", "lossy_link"),))] == inc["mttr_seconds"]
    assert m[("meshcore_mitigation_seconds_count", (("class", "lossy_link"),))] == 0
    assert m[("meshcore_remediation_actions_total",
              (("action", "quarantine_link"), ("outcome", "applied")))] == 1
    assert m[("meshcore_mapek_threshold", (("signal", "loss"),))] == pytest.approx(
        body["thresholds"]["loss"])
    assert m[("meshcore_mapek_active_actions", ())] == 0
    assert m[("meshcore_mapek_leases_held", ())] == 0


def test_meshctl_incidents_table_and_json(enforced, monkeypatch) -> None:
    agent, clock, client, b = enforced
    for keep in (2, 2, 2, 1, 1, 1, 1):
        hellos(agent, b, clock, 5.0, keep_every=keep)
        agent.mapek.tick()

    meshctl_in_process(monkeypatch, client)
    import io

    out = io.StringIO()
    assert ctl.main(["--api", "http://in-process", "incidents"], out=out) == 0
    text = out.getvalue()
    assert text.startswith("a: mapek enforce, policy fixed, 1 action(s) in force")  # held
    assert text.splitlines()[1].split()[-2:] == ["MTTR", "MITIGATED"]
    row = text.splitlines()[2].split()
    assert row[0] == "1" and "lossy_link" in row and "link:b" in row
    assert "quarantine_link" in row and "applied" in row and "recovered" in row
    # Below the incidents, what the loop has learned per class and action.
    learned = text[text.index("learned:"):].splitlines()
    assert learned[1].split() == ["CLASS", "ACTION", "TRIES", "SUCCESSES", "FAILURES",
                                  "MEAN", "MTTR", "RULE"]
    assert learned[2].split()[:5] == ["lossy_link", "quarantine_link", "1", "0", "1"]
    assert learned[2].split()[-1] == "yes"
    out = io.StringIO()
    assert ctl.main(["--api", "http://in-process", "--json", "incidents", "--open"],
                    out=out) == 0
    assert json.loads(out.getvalue())["incidents"] == []


def test_a_collateral_charge_is_recorded_as_an_event(enforced) -> None:
    # The core blames an action for a later incident (MapeK._collateral): the shell keeps
    # why in the event log, where the operator finds it beside the action's apply.
    agent, _clock, _client, _b = enforced
    charge = Charge(source=3, cls="starved_node", action="restart_unit", by=4,
                    by_cls="route_churn", after_s=12.5)
    agent.mapek.settle(Step(charges=[charge]))
    [ev] = agent.events.query(kinds=[EventKind.REMEDIATION])
    assert (ev.subject, ev.reason) == ("a", "charge:restart_unit")
    assert ev.detail == {"incident": 3, "class": "starved_node", "action": "restart_unit",
                         "by_incident": 4, "by_class": "route_churn", "after_seconds": 12.5}


def test_observe_mode_changes_nothing(ca: CA, tmp_path: Path) -> None:
    clock = Clock()
    agent = make_agent(ca, tmp_path, clock, {"enabled": True})  # observe, the default
    b = ready_and_armed(agent, ca, clock)
    for _ in range(4):
        hellos(agent, b, clock, 5.0, keep_every=2)
        agent.mapek.tick()
    assert agent.sensor.penalties == {}
    assert agent.view.incidents()["incidents"][0]["action"] == {
        "kind": "quarantine_link", "outcome": "observed"}
    assert agent.events.query(kinds=[EventKind.REMEDIATION]) == []


def test_off_by_default_and_the_metrics_are_still_there(ca: CA, tmp_path: Path) -> None:
    agent = make_agent(ca, tmp_path, Clock(), {})
    assert agent.mapek is None and agent.view.knowledge is None
    client = TestClient(create_app(agent.view, agent.metrics.registry, agent.events))
    body = client.get("/v1/incidents").json()
    assert body["enabled"] is False and body["incidents"] == []
    m = metrics(client)
    assert m[("meshcore_incidents_total", (("class", "lossy_link"),))] == 0
    assert m[("meshcore_mttr_seconds_count", (("class", "starved_node"),))] == 0
    assert m[("meshcore_remediation_actions_total",
              (("action", "none"), ("outcome", "noop")))] == 0
    assert m[("meshcore_mapek_threshold", (("signal", "loss"),))] == 0


def test_knowledge_carries_over_a_restart(ca: CA, tmp_path: Path) -> None:
    clock = Clock()
    first = make_agent(ca, tmp_path, clock, {"enabled": True, "mode": "enforce",
                                             "policy": "learned"})
    b = ready_and_armed(first, ca, clock)
    for keep in (2, 2, 2, 1, 1, 1, 1):
        hellos(first, b, clock, 5.0, keep_every=keep)
        first.mapek.tick()
    assert first.mapek is not None and sum(s.tries for s in first.mapek.core.stats.values()) == 1
    first.view.knowledge.close()  # type: ignore[union-attr]
    first.events.close()
    second = make_agent(ca, tmp_path, clock, {"enabled": True, "mode": "enforce",
                                              "policy": "learned"})
    assert second.mapek is not None
    assert second.mapek.core.stats == first.mapek.core.stats
    assert second.mapek.core.analyzer.next_id == 2
    assert [i["state"] for i in second.view.incidents()["incidents"]] == ["recovered"]


def test_a_threshold_tuned_from_an_older_default_is_rebased_at_start(
        ca: CA, tmp_path: Path) -> None:
    """A release moved a default (link_downs 3 -> 6/min, session 41): the value a node
    tuned from the old default is rescaled, not kept; one with no recorded default (a
    database from before) starts from today's; the rebase is in the history."""
    old = Knowledge.in_state_dir(tmp_path)
    old.defaults = {"link_downs": 3.0, "loss": DEFAULT_BOUNDS[Signal.LOSS].default}
    old.threshold_changed("link_downs", 3.6, "false_alarm:1", 1.0)  # tuned from 3
    old.threshold_changed("loss", 0.3, "false_alarm:2", 2.0)  # from today's default
    old.defaults = {}
    old.threshold_changed("rtt", 0.5, "false_alarm:3", 3.0)  # before schema 4
    old.close()
    agent = make_agent(ca, tmp_path, Clock(), {"enabled": True, "mode": "enforce"})
    assert agent.mapek is not None
    t = agent.mapek.core.thresholds
    today = DEFAULT_BOUNDS[Signal.DOWNS].default
    assert t[Signal.DOWNS] == pytest.approx(3.6 * today / 3.0)
    assert t[Signal.LOSS] == pytest.approx(0.3)
    assert t[Signal.RTT] == DEFAULT_BOUNDS[Signal.RTT].default
    k = agent.view.knowledge
    assert k is not None
    assert [h["reason"] for h in k.threshold_history()[-2:]] == [
        f"rebased:3->{today:g}", "reset:default_unrecorded"]
    assert k.tuned()["link_downs"] == (pytest.approx(3.6 * today / 3.0), today)
    # Rebased once: the next start takes the stored values as they are.
    k.close()
    agent.events.close()
    again = make_agent(ca, tmp_path, Clock(), {"enabled": True, "mode": "enforce"})
    assert again.mapek is not None
    assert again.mapek.core.thresholds.as_dict() == t.as_dict()
    assert len(again.view.knowledge.threshold_history()) == 5  # type: ignore[union-attr]


def test_a_blocking_lease_call_runs_off_the_event_loop_and_its_answer_is_recorded(
        enforced, tmp_path: Path) -> None:
    """etcd answers slowly: the tick returns at once, the call runs in a worker thread,
    and the decision (with the lease's token) lands in Knowledge and /v1/incidents."""
    import asyncio
    import threading
    import time

    from mesh_agent.mapek.plan import ActionKind
    from mesh_agent.mapek.safety import Lease

    agent, clock, client, b = enforced

    class SlowEtcd:
        name, blocking = "slow", True

        def __init__(self) -> None:
            self.threads: list[int] = []
            self.released: list[int] = []

        def acquire(self, holder: str, action: str, ttl_s: float, now: float) -> Lease:
            self.threads.append(threading.get_ident())
            time.sleep(0.3)
            return Lease(77, holder, now + ttl_s, 1)

        def release(self, lease: Lease) -> None:
            self.released.append(lease.token)

        def validate(self, lease: Lease, now: float) -> bool:
            return True

    class Restart:
        def choose(self, cls: str, stats: object, available: object = None) -> str:
            return str(ActionKind.RESTART_UNIT)

    slow = SlowEtcd()
    shell = agent.mapek
    assert shell is not None
    shell.core.safety.leases, shell.core.policy = slow, Restart()

    async def run() -> float:
        longest = 0.0
        for _ in range(4):
            hellos(agent, b, clock, 5.0, keep_every=2)
            t = time.monotonic()
            shell.tick()
            longest = max(longest, time.monotonic() - t)
        while shell._tasks:
            await asyncio.sleep(0.05)
        return longest

    longest = asyncio.run(run())
    assert longest < 0.2 and slow.threads and threading.get_ident() not in slow.threads
    assert slow.released == [77]  # a one-shot action: handed back at once
    [inc] = client.get("/v1/incidents").json()["incidents"]
    assert inc["action"] == {"kind": "restart_unit", "outcome": "applied"}
    stored = Knowledge.in_state_dir(tmp_path)
    try:
        assert [i["action"] for i in stored.incidents()] == [
            {"kind": "restart_unit", "outcome": "applied"}]
    finally:
        stored.close()


class LeaseLog:
    """A blocking provider that grants at once and records every call in order."""

    name, blocking = "log", True

    def __init__(self, valid: bool = True) -> None:
        self.valid, self.calls = valid, []  # type: ignore[var-annotated]

    def acquire(self, holder: str, action: str, ttl_s: float, now: float) -> Any:
        from mesh_agent.mapek.safety import Lease

        self.calls.append("acquire")
        return Lease(88, holder, now + ttl_s, 1)

    def release(self, lease: Any) -> None:
        self.calls.append(f"release:{lease.token}")

    def validate(self, lease: Any, now: float) -> bool:
        self.calls.append(f"validate:{lease.token}")
        return self.valid

    def renew(self, lease: Any, ttl_s: float, now: float) -> Any:
        from mesh_agent.mapek.safety import Lease

        self.calls.append(f"renew:{lease.token}")
        return Lease(lease.token, lease.holder, now + ttl_s, lease.lease_id)


def restart_run(ca: CA, tmp_path: Path, valid: bool = True, hog: float = 0.8,
                units: tuple[str, ...] = ("hog.service", "idle.service"), delay: float = 2.0
                ) -> tuple[LeaseLog, list[str], list[dict[str, Any]], Agent]:
    """An agent allowlisting *units*, a lossy link, a policy that restarts: the lease's
    calls, the units restarted and the remediation events."""
    import asyncio

    from mesh_agent.mapek.plan import ActionKind

    class Restart:
        def choose(self, cls: str, stats: object, available: object = None) -> str:
            return str(ActionKind.RESTART_UNIT)

    clock = Clock()
    agent = make_agent(ca, tmp_path, clock, {"enabled": True, "mode": "enforce",
                                             "interval_s": 5, "restart_units": list(units)})
    b = ready_and_armed(agent, ca, clock)
    shell = agent.mapek
    assert shell is not None
    leases, restarted = LeaseLog(valid), []

    def unit_cpu(names: Any) -> dict[str, float]:
        used = clock.now - T0
        return {"hog.service": hog * used, "idle.service": 0.01 * used}

    def restart(unit: str) -> None:
        leases.calls.append(f"restart:{unit}")
        restarted.append(unit)

    shell.core.safety.leases, shell.core.policy = leases, Restart()
    shell.unit_cpu, shell.restart_unit = unit_cpu, restart  # type: ignore[assignment]

    async def run() -> None:
        for _ in range(3):
            hellos(agent, b, clock, 5.0, keep_every=2)
            shell.tick()
            clock.now += delay  # the lease's answer and the restart come a little later
            while shell._tasks:
                await asyncio.sleep(0.01)

    asyncio.run(run())
    events = [e.as_dict() for e in agent.events.query(kinds=[EventKind.REMEDIATION])]
    return leases, restarted, events, agent


@pytest.mark.parametrize("delay", [2.0, 0.0])
def test_restart_unit_restarts_the_busiest_allowlisted_unit_under_a_valid_lease(
        ca: CA, tmp_path: Path, delay: float) -> None:
    """*delay*: the lease's answer comes 2 s after the deciding tick, or at once (then the
    CPU is compared with the tick before)."""
    leases, restarted, events, _agent = restart_run(ca, tmp_path, delay=delay)
    assert restarted == ["hog.service"]
    # validated just before acting, handed back only after
    assert leases.calls == ["acquire", "validate:88", "restart:hog.service", "release:88"]
    [ev] = events
    assert ev["reason"] == "apply:restart_unit"
    assert ev["detail"]["unit"] == "hog.service" and ev["detail"]["result"] == "done"
    assert "80% of a core" in ev["detail"]["why"] and ev["detail"]["lease_token"] == 88


def test_restart_unit_does_nothing_with_a_lost_lease_or_no_busy_unit(
        ca: CA, tmp_path: Path) -> None:
    leases, restarted, events, _ = restart_run(ca, tmp_path / "lost", valid=False)
    assert restarted == [] and leases.calls == ["acquire", "validate:88", "release:88"]
    assert [e["detail"]["result"] for e in events] == ["refused"]
    leases, restarted, events, _ = restart_run(ca, tmp_path / "idle", hog=0.1)
    assert restarted == [] and leases.calls[-1] == "release:88"
    [ev] = events
    assert ev["detail"]["result"] == "noop" and "busiest: hog.service, 10%" in ev["detail"]["why"]


def test_the_loop_chooses_only_what_this_node_can_carry_out(ca: CA, tmp_path: Path) -> None:
    from mesh_agent.mapek.analyze import IncidentClass
    from mesh_agent.mapek.plan import ActionKind, FixedPolicy, ThompsonPolicy
    from mesh_agent.mapek.shell import available_actions

    base = {"node_name": "a", "node_address": "10.77.0.1"}
    plain = available_actions(parse_config({**base, "mapek": {"enabled": True}}))
    assert ActionKind.RESTART_UNIT not in plain and ActionKind.REREQUEST_IDENTITY not in plain
    assert ActionKind.ISOLATE_ORIGIN in plain
    listed = available_actions(parse_config(
        {**base, "mapek": {"enabled": True, "restart_units": ["chrony.service"]}}))
    assert listed == plain | {ActionKind.RESTART_UNIT}
    assert FixedPolicy().choose(IncidentClass.ADVERT_STORM, {}, plain) == "isolate_origin"
    # a rule with no executor here falls back to none
    assert FixedPolicy().choose(IncidentClass.ADVERT_STORM, {},
                                plain - {ActionKind.ISOLATE_ORIGIN}) == "none"
    assert FixedPolicy().choose(IncidentClass.LOSSY_LINK, {}, plain) == "quarantine_link"
    seen = {ThompsonPolicy().choose(IncidentClass.STARVED, {}, plain) for _ in range(200)}
    assert seen == {"lengthen_hello", "none"}
    for bad in (["mesh-agent.service"], ["ssh.service"], ["chrony"], "x", [1]):
        with pytest.raises(ValueError, match=r"mapek\.restart_units"):
            parse_config({**base, "mapek": {"restart_units": bad}})


def test_the_loss_window_comes_from_the_config(ca: CA, tmp_path: Path) -> None:
    agent = make_agent(ca, tmp_path, Clock(), {"enabled": True, "loss_min_hellos": 40})
    assert agent.mapek is not None and agent.mapek.core.monitor.loss_min_hellos == 40
    base = {"node_name": "a", "node_address": "10.77.0.1"}
    assert parse_config({**base}).mapek.loss_min_hellos == 100
    for bad in (0, 9, 100001, "many"):
        with pytest.raises(ValueError, match=r"mapek\.loss_min_hellos"):
            parse_config({**base, "mapek": {"loss_min_hellos": bad}})


def test_unit_cpu_reads_cgroup_v2_usage(tmp_path: Path) -> None:
    from mesh_agent.mapek.execute import busiest_unit
    from mesh_agent.mapek.shell import unit_cpu_seconds

    (tmp_path / "a.service").mkdir()
    (tmp_path / "a.service" / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 1\n")
    (tmp_path / "b.service").mkdir()
    (tmp_path / "b.service" / "cpu.stat").write_text("garbage\n")
    proc = tmp_path / "proc"
    assert unit_cpu_seconds(["a.service", "b.service", "gone.service"], tmp_path, proc) == {
        "a.service": 2.5}
    # Without the unified hierarchy's file (cgroup v1, a container's read-only controllers):
    # the unit's live processes, found by their cgroup path, from /proc/PID/stat.
    tick = os.sysconf("SC_CLK_TCK")
    for pid, cgroup, utime, stime in ((7, "1:name=systemd:/x/system.slice/b.service", 3, 1),
                                      (8, "0::/system.slice/b.service", 2, 2),
                                      (9, "0::/system.slice/other.service", 50, 50)):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(cgroup + "\n")
        rest = " ".join(["S"] + ["0"] * 10 + [str(utime * tick), str(stime * tick)] + ["0"] * 8)
        (proc / str(pid) / "stat").write_text(f"{pid} (python3 (x)) {rest}\n")
    (proc / "self").mkdir()
    assert unit_cpu_seconds(["a.service", "b.service", "gone.service"], tmp_path, proc) == {
        "a.service": 2.5, "b.service": 8.0}
    assert busiest_unit({"a": 1.0, "b": 5.0}, {"a": 3.0, "b": 1.0}, 4.0) == (
        "a", "a used 50% of a core over 4.0 s")  # b restarted in between: left out
    assert busiest_unit({}, {"a": 1.0}, 4.0)[0] is None
    assert busiest_unit({"a": 1.0}, {"a": 2.0}, 0.0)[0] is None


def test_the_timers_tick_reads_unit_cpu_in_a_worker_thread(ca: CA, tmp_path: Path) -> None:
    """On cgroup v1 the units' CPU is a /proc scan: the loop's timer reads it in a worker
    thread and passes the sample to the step, so the event loop never waits on it."""
    import asyncio
    import threading

    from mesh_agent.timers import every

    clock = Clock()
    agent = make_agent(ca, tmp_path, clock, {"enabled": True, "mode": "enforce",
                                             "interval_s": 5, "restart_units": ["x.service"]})
    shell = agent.mapek
    assert shell is not None
    readers: list[int] = []

    def unit_cpu(names: Any) -> dict[str, float]:
        readers.append(threading.get_ident())
        return {"x.service": 1.5}

    shell.unit_cpu = unit_cpu  # type: ignore[assignment]

    async def run() -> None:
        timer = asyncio.ensure_future(every(clock, 0.01, shell._sampled_tick))
        while len(readers) < 2:
            await asyncio.sleep(0.005)
        timer.cancel()

    asyncio.run(run())
    assert readers and threading.get_ident() not in readers
    assert shell._unit_samples[-1][1] == {"x.service": 1.5}
    shell.tick()  # called by hand (the tests above): read on the spot
    assert readers[-1] == threading.get_ident()


def test_a_hold_down_ends_the_link_through_the_agent_and_its_undo_lets_it_back(
        enforced) -> None:
    """The shell carries hold_down_link onto the link sensor, and the session it ends goes
    through the agent's own handling of a neighbour down (event log, re-origination)."""
    import asyncio

    from mesh_agent.mapek.execute import Op
    from mesh_agent.mapek.monitor import Target
    from mesh_agent.mapek.plan import ActionKind

    agent, clock, _client, b = enforced
    assert [n.name for n in agent.sensor.up_neighbors()] == ["b"]
    core = agent.mapek.core
    hold = core.executor.build(ActionKind.HOLD_DOWN_LINK, Target("link", "b"), 99, clock.now)

    async def carry(op: Op) -> None:
        agent.mapek.carry(op)
        await asyncio.sleep(0)  # the agent's re-origination, queued with call_soon

    asyncio.run(carry(Op("apply", hold)))
    assert agent.sensor.up_neighbors() == [] and agent.sensor.holds == {"b": hold.expires_at}
    downs = agent.events.query(kinds=[EventKind.LINK_DOWN])
    assert [(e.subject, e.reason) for e in downs][-1] == ("b", "hold-down")
    assert "b" not in dict(agent.topology.lsdb.entries()["a"].advert.links)  # re-originated
    hellos(agent, b, clock, 2.0, keep_every=1)
    assert agent.sensor.up_neighbors() == []  # held: heard, never up
    asyncio.run(carry(Op("undo", hold, "released")))
    hellos(agent, b, clock, 0.5, keep_every=1)
    assert [n.name for n in agent.sensor.up_neighbors()] == ["b"]
    rem = agent.events.query(kinds=[EventKind.REMEDIATION])
    assert [e.reason for e in rem] == ["apply:hold_down_link", "undo:hold_down_link"]


def test_meshctl_incidents_shows_what_a_symptom_was_attributed_to() -> None:
    from mesh_agent.ctl.main import render_incidents

    def inc(iid: int, cls: str, target: str, kind: str, outcome: str,
            cause: int | None) -> dict[str, Any]:
        return {"id": iid, "detected_wall": 1796559647.5, "class": cls, "target": target,
                "signal": {"name": "x", "value": 10.0, "threshold": 3.0},
                "action": {"kind": kind, "outcome": outcome}, "state": "recovered",
                "mttr_seconds": 30.0, "cause": cause}

    text = render_incidents({
        "node": "n0", "enabled": True, "mode": "enforce", "policy": "fixed",
        "active_actions": [], "knowledge": "ok",
        "incidents": [inc(1, "flapping_link", "link:n1", "hold_down_link", "applied", None),
                      inc(2, "failover_storm", "self:", "none", "attributed", 1)]})
    storm = next(line for line in text.splitlines() if "failover_storm" in line)
    flap = next(line for line in text.splitlines() if "flapping_link" in line)
    assert "attributed, cause #1" in storm and "cause" not in flap


def flood(agent: Agent, clock: Clock, b: LinkSensor, src: str, seconds: float = 5.0,
          per_s: int = 20) -> None:
    """Clean hellos with b for *seconds*, and *per_s* malformed adverts a second from the
    hop (mesh0, *src*) meanwhile."""
    for _ in range(int(seconds)):
        hellos(agent, b, clock, 1.0, keep_every=1)
        for _ in range(per_s):
            agent._on_advert("mesh0", (b"\x00garbage", src, clock.now, None))


def leased_agent(ca: CA, tmp_path: Path) -> tuple[Agent, Clock, LinkSensor, LeaseLog]:
    """An enforce-mode agent, ready and armed with b, whose leases come from a LeaseLog."""
    clock = Clock()
    agent = make_agent(ca, tmp_path, clock, {"enabled": True, "mode": "enforce",
                                             "interval_s": 5})
    b = ready_and_armed(agent, ca, clock)
    assert agent.mapek is not None
    leases = LeaseLog()
    agent.mapek.core.safety.leases = leases
    return agent, clock, b, leases


def ticks(agent: Agent, clock: Clock, b: LinkSensor, n: int, src: str | None) -> None:
    """*n* loop ticks, each after 5 s of clean hellos with b and, when *src* is given, a
    flood of refused adverts from the hop (mesh0, *src*); the lease calls and executors
    each tick starts are waited for."""
    import asyncio

    shell = agent.mapek
    assert shell is not None

    async def run() -> None:
        for _ in range(n):
            if src is None:
                hellos(agent, b, clock, 5.0, keep_every=1)
            else:
                flood(agent, clock, b, src)
            shell.tick()
            while shell._tasks:
                await asyncio.sleep(0.01)

    asyncio.run(run())


def test_an_advert_storm_from_a_neighbour_isolates_it_under_a_lease_with_a_signed_decision(
        ca: CA, tmp_path: Path) -> None:
    """b floods us with adverts we refuse: the incident's suspect is b (the hop they came
    from, not the origin they claim); the fixed rule isolates it under a lease (validated,
    then held and renewed while b goes on flooding), every advert from b's hop is then
    dropped unread, the decision is signed with our key, and once b stops the isolation
    is released and the lease handed back."""
    from mesh_agent.mapek.execute import MAX_HOLD_S
    from mesh_agent.mapek.shell import decision_verifies

    agent, clock, b, leases = leased_agent(ca, tmp_path)
    hop = ("mesh0", "10.98.0.1")
    ticks(agent, clock, b, 2, hop[1])
    [inc] = agent.view.incidents()["incidents"]
    assert inc["class"] == "advert_storm" and inc["target"] == "link:b"
    assert inc["action"] == {"kind": "isolate_origin", "outcome": "applied"}
    # validated before acting, and held (not handed back: the isolation lasts), the
    # adverts dropped until the lease's deadline (each renewal extends it)
    assert leases.calls == ["acquire", "validate:88"]
    ttl = agent.mapek.core.safety.lease_ttl_s
    assert agent.topology.isolated == {hop: pytest.approx(clock.now + ttl, abs=0.5)}
    [ev] = [e.as_dict() for e in agent.events.query(kinds=[EventKind.REMEDIATION])]
    assert ev["detail"]["result"] == "done" and ev["reason"] == "apply:isolate_origin"
    signed = {"decision": ev["detail"]["decision"], "signature": ev["detail"]["signature"]}
    assert signed["decision"]["neighbour"] == "b" and signed["decision"]["lease_token"] == 88
    assert signed["decision"]["hops"] == [list(hop)]
    assert decision_verifies(signed, agent.topology.lsdb.identity.cert.public_key())
    forged = {**signed, "decision": {**signed["decision"], "neighbour": "c"}}
    assert not decision_verifies(forged, agent.topology.lsdb.identity.cert.public_key())
    # b's adverts are now dropped unread: the storm is over for the loop
    rejected = sum(agent.topology.lsdb.rejected.values())
    ticks(agent, clock, b, 10, hop[1])  # past the rate window and the 3 clear samples
    assert sum(agent.topology.lsdb.rejected.values()) == rejected
    assert agent.topology.isolated_total >= 10 * 5 * 20
    got = metrics(TestClient(create_app(agent.view, agent.metrics.registry, agent.events)))
    assert got[("meshcore_adverts_isolated_total", ())] == agent.topology.isolated_total
    assert got[("meshcore_isolated_hops", ())] == 1
    assert got[("meshcore_mapek_leases_held", ())] == 1
    [inc] = agent.view.incidents()["incidents"]
    assert inc["state"] == "recovered" and inc["mttr_seconds"] is not None
    # kept past its TTL while b floods: the lease renewed (here at the samples, no timer
    # runs: every third of a TTL, rounded up to a sample), the isolation extended with it
    assert leases.calls.count("renew:88") >= 50 // (ttl / 3 + 5)
    assert "release:88" not in leases.calls
    assert agent.topology.isolated == {hop: pytest.approx(clock.now + ttl, abs=ttl / 3 + 1)}
    # b stops: released by its damping (the rate window and at most its longest hold),
    # the lease handed back
    ticks(agent, clock, b, int((30 + MAX_HOLD_S) / 5) + 2, None)
    assert agent.topology.isolated == {} and agent.mapek.core.executor.active == {}
    assert leases.calls[-1] == "release:88" and agent.mapek.core.held == {}
    [undo] = [e.as_dict() for e in agent.events.query(kinds=[EventKind.REMEDIATION])
              if e.reason == "undo:isolate_origin"]
    assert undo["detail"]["reason"] == "released"
    agent._on_advert("mesh0", (b"\x00garbage", hop[1], clock.now, None))
    assert sum(agent.topology.lsdb.rejected.values()) == rejected + 1


def test_an_isolation_is_lifted_when_a_node_comes_to_reach_us_only_through_it(
        ca: CA, tmp_path: Path) -> None:
    """While b is isolated the mesh changes so that c reaches us only through b (the
    view's graph, as our LSDB would show it after the other path failed): the view names
    b, the loop lifts the isolation (reason cut_off) and hands its lease back."""
    import networkx as nx

    agent, clock, b, leases = leased_agent(ca, tmp_path)
    hop = ("mesh0", "10.98.0.1")
    ticks(agent, clock, b, 2, hop[1])
    assert set(agent.topology.isolated) == {hop} and agent.view.isolated_cut() == frozenset()
    me = agent.cfg.node_name
    agent.view.graph = lambda: nx.path_graph([me, "b", "c"])  # type: ignore[method-assign]
    assert agent.view.isolated_cut() == frozenset({"b"})
    ticks(agent, clock, b, 1, hop[1])
    assert agent.topology.isolated == {} and agent.mapek is not None
    assert agent.mapek.core.executor.active == {} and leases.calls[-1] == "release:88"
    [undo] = [e.as_dict() for e in agent.events.query(kinds=[EventKind.REMEDIATION])
              if e.reason == "undo:isolate_origin"]
    assert undo["detail"]["reason"] == "cut_off"


def test_a_stopping_agent_hands_back_the_lease_of_an_isolation_in_force(
        ca: CA, tmp_path: Path) -> None:
    agent, clock, b, leases = leased_agent(ca, tmp_path)
    ticks(agent, clock, b, 2, "10.98.0.1")
    assert agent.mapek is not None and set(agent.mapek.core.held) == {88}
    agent.mapek.close()
    assert leases.calls[-1] == "release:88" and agent.mapek.core.held == {}


def test_an_advert_storm_from_no_neighbour_isolates_nothing(ca: CA, tmp_path: Path) -> None:
    """Refused adverts from a hop that is no neighbour read on the node itself: nothing to
    isolate, so the rule falls back to none and no lease is asked for."""
    agent, clock, b, leases = leased_agent(ca, tmp_path)
    ticks(agent, clock, b, 2, "10.98.0.77")
    [inc] = agent.view.incidents()["incidents"]
    assert inc["class"] == "advert_storm" and inc["target"] == "self:"
    assert inc["action"] == {"kind": "none", "outcome": "noop"}
    assert leases.calls == [] and agent.topology.isolated == {}


def test_isolation_is_refused_where_a_node_reaches_us_only_through_that_neighbour() -> None:
    import networkx as nx

    from mesh_agent.mapek.shell import cut_off_by

    ring = nx.cycle_graph(["a", "b", "c", "d"])
    assert cut_off_by(ring, "a", "b") == set()
    line = nx.path_graph(["a", "b", "c", "d"])
    assert cut_off_by(line, "a", "b") == {"c", "d"}
    tail = nx.Graph([("a", "b"), ("a", "c"), ("b", "c"), ("b", "e")])
    assert cut_off_by(tail, "a", "b") == {"e"}
    assert cut_off_by(tail, "a", "zz") == set() and cut_off_by(tail, "zz", "b") == set()


# -- a certificate not rotated in time: stale_identity, rerequest_identity -----------
def svid_context(ca: CA, age_h: float, left_h: float) -> Any:
    """An X.509 context for node a as SPIRE gives it: an SVID that began *age_h* hours
    ago and ends in *left_h* hours (the address as its in-addr.arpa DNS SAN)."""
    import datetime as dt

    from spiffe import SpiffeId, TrustDomain, X509Bundle, X509BundleSet, X509Svid
    from spiffe.workloadapi.x509_context import X509Context

    from mesh_agent.identity import address_san, spiffe_id

    now = dt.datetime.now(dt.UTC)
    key, cert = ca.issue("a", days=left_h / 24, dns_names=[address_san("10.77.0.1")],
                         not_before=now - dt.timedelta(hours=age_h))
    svid = X509Svid(SpiffeId(spiffe_id(TRUST_DOMAIN, "a")), [cert], key)
    return X509Context([svid], X509BundleSet.of([X509Bundle(TrustDomain(TRUST_DOMAIN),
                                                             {ca.cert})]))


def stale_identity_run(ca: CA, tmp_path: Path, workload_api: bool, policy: str = "fixed",
                       ticks: int = 8) -> tuple[Agent, TestClient, Any, LeaseLog]:
    """Agent a, enforce, its SVID 80 % through its life (20 h of 25), from the Workload
    API (a stand-in client whose stream missed the rotation to a fresh SVID) or, without
    *workload_api*, from files; *ticks* loop ticks after it armed."""
    import asyncio

    from meshcore_testkit.workload_api import StandInClient

    from mesh_agent.identity.watch import FileSource, IdentityWatcher, WorkloadApiSource

    clock = Clock()
    stale = svid_context(ca, age_h=20, left_h=5)
    client = StandInClient(stale)
    source = WorkloadApiSource("unused", "a", TRUST_DOMAIN, timeout_s=5, client=client)
    m = source.load()
    identity = Identity("a", TRUST_DOMAIN, m.key, m.cert, ca.cert, (ca.cert,),
                        node_address="10.77.0.1")
    agent = make_agent(ca, tmp_path, clock, {"enabled": True, "mode": "enforce",
                                             "interval_s": 5, "policy": policy}, identity)
    if workload_api:
        agent.follow(IdentityWatcher(source, agent.identity))
    else:
        source.close()
        paths = ca.write(tmp_path / "pki", "a", "10.77.0.1")
        agent.follow(IdentityWatcher(FileSource(IdentityConfig(**{
            k: Path(v) for k, v in paths.items()})), agent.identity))
    shell = agent.mapek
    assert shell is not None
    leases = LeaseLog()
    shell.core.safety.leases = leases
    b = ready_and_armed(agent, ca, clock)
    client.stall(svid_context(ca, age_h=0.1, left_h=24))  # SPIRE rotated; the stream missed it

    async def run() -> None:
        for _ in range(ticks):
            hellos(agent, b, clock, 5.0, keep_every=1)
            shell.tick()
            while shell._tasks:
                await asyncio.sleep(0.01)

    try:
        asyncio.run(run())
    finally:
        source.close()
    return agent, TestClient(create_app(agent.view, agent.metrics.registry, agent.events)), \
        client, leases


def test_a_stale_svid_is_asked_again_under_a_lease_and_the_incident_recovers(
        ca: CA, tmp_path: Path) -> None:
    agent, api, client, leases = stale_identity_run(ca, tmp_path, workload_api=True)
    [inc] = api.get("/v1/incidents").json()["incidents"]
    assert inc["class"] == "stale_identity" and inc["target"] == "self:"
    assert inc["signal"]["name"] == "identity_age" and inc["signal"]["threshold"] == 0.75
    assert 0.79 < inc["signal"]["value"] < 0.81
    assert inc["action"] == {"kind": "rerequest_identity", "outcome": "applied"}
    assert inc["state"] == "recovered" and 0 < inc["mttr_seconds"] <= 30
    # a new stream, the fresh SVID swapped in (under the lease: validated, then handed back)
    assert client.streams == 2 and agent.identity.cert == client.current.default_svid.leaf
    assert leases.calls == ["acquire", "validate:88", "release:88"]
    [ev] = [e.as_dict() for e in agent.events.query(kinds=[EventKind.REMEDIATION])]
    assert ev["reason"] == "apply:rerequest_identity" and ev["detail"]["result"] == "done"
    assert ev["detail"]["serial"] == f"{agent.identity.cert.serial_number:x}"
    assert ev["detail"]["lease_token"] == 88
    assert [e.reason for e in agent.events.query(kinds=[EventKind.IDENTITY_ROTATED])] == [
        "workload_api"]
    m = metrics(api)
    assert m[("meshcore_incidents_total", (("class", "stale_identity"),))] == 1
    assert m[("meshcore_remediation_actions_total",
              (("action", "rerequest_identity"), ("outcome", "applied")))] == 1
    assert m[("meshcore_mapek_threshold", (("signal", "identity_age"),))] == 0.75


def test_a_stale_certificate_from_files_is_an_incident_with_nothing_to_do(
        ca: CA, tmp_path: Path) -> None:
    """Files are renewed by whoever writes them (site.yml for lab_pki): the incident is
    the alarm, and neither policy can choose to ask again."""
    from mesh_agent.mapek.plan import ActionKind

    for policy in ("fixed", "learned"):
        agent, api, client, leases = stale_identity_run(ca, tmp_path / policy, False, policy,
                                                         ticks=4)
        assert agent.mapek is not None
        assert ActionKind.REREQUEST_IDENTITY not in (agent.mapek.core.available or ())
        [inc] = api.get("/v1/incidents").json()["incidents"]
        assert inc["class"] == "stale_identity" and inc["state"] == "open"
        assert inc["action"]["kind"] == "none"
        assert leases.calls == [] and client.streams == 1
        assert agent.events.query(kinds=[EventKind.REMEDIATION]) == []


def test_no_certificate_age_is_read_while_the_clock_is_not_trusted(
        ca: CA, tmp_path: Path) -> None:
    clock = Clock()
    agent = make_agent(ca, tmp_path, clock, {"enabled": True})
    agent.identity.check_validity = False
    assert agent.view.observation(0.0, 2e9).identity_age is None
    agent.identity.check_validity = True
    assert 0 < agent.view.observation(0.0, time.time()).identity_age < 0.01
    assert agent.view.observation(0.0, None).identity_age is None


def test_a_maintenance_window_records_incidents_and_acts_after_it(enforced, monkeypatch
                                                                   ) -> None:
    """The window's file in the state directory, read at each tick: the incident is
    recorded (API, meshctl, metrics, events), nothing is done until the file is gone, then
    the quarantine comes at the next tick."""
    from mesh_agent.mapek import maintenance

    agent, clock, client, b = enforced
    assert agent.mapek is not None
    state_dir = agent.cfg.state_dir
    w = maintenance.window(600, "rollout", time.time())
    maintenance.write(state_dir, w)
    for _ in range(4):
        hellos(agent, b, clock, 5.0, keep_every=2)
        agent.mapek.tick()
    assert agent.sensor.penalties == {}
    body = client.get("/v1/incidents").json()
    assert body["maintenance"] == w.as_dict()
    [inc] = body["incidents"]
    assert inc["action"] == {"kind": "none", "outcome": "maintenance"} and inc["state"] == "open"
    m = metrics(client)
    assert m[("meshcore_mapek_maintenance_until_timestamp_seconds", ())] == w.until
    assert m[("meshcore_remediation_actions_total",
              (("action", "none"), ("outcome", "maintenance")))] == 1
    opened = agent.events.query(kinds=[EventKind.MAINTENANCE])
    assert [(e.reason, e.detail["reason"]) for e in opened] == [("open", "rollout")]

    meshctl_in_process(monkeypatch, client)
    import io

    out = io.StringIO()
    assert ctl.main(["--api", "http://in-process", "incidents"], out=out) == 0
    assert "maintenance window until" in out.getvalue() and ": rollout" in out.getvalue()
    # The change is done: the window closed, the link still lossy: quarantined now.
    maintenance.clear(state_dir)
    hellos(agent, b, clock, 5.0, keep_every=2)
    agent.mapek.tick()
    assert agent.sensor.penalties == {"b": QUARANTINE_COST}
    body = client.get("/v1/incidents").json()
    assert body["maintenance"] is None
    assert body["incidents"][0]["action"] == {"kind": "quarantine_link", "outcome": "applied"}
    assert [e.reason for e in agent.events.query(kinds=[EventKind.MAINTENANCE])] == [
        "open", "closed"]
    assert metrics(client)[("meshcore_mapek_maintenance_until_timestamp_seconds", ())] == 0


def test_a_broken_window_file_opens_no_window_and_is_reported_once(enforced) -> None:
    from mesh_agent.mapek import maintenance

    agent, clock, client, b = enforced
    assert agent.mapek is not None
    maintenance.path(agent.cfg.state_dir).write_text("{not json")
    for _ in range(4):
        hellos(agent, b, clock, 5.0, keep_every=2)
        agent.mapek.tick()
    assert agent.sensor.penalties == {"b": QUARANTINE_COST}  # the loop was not silenced
    bad = agent.events.query(kinds=[EventKind.MAINTENANCE])
    assert [e.reason for e in bad] == ["invalid"] and "not JSON" in bad[0].detail["why"]
    assert client.get("/v1/incidents").json()["maintenance"] is None
