"""Maintenance windows: the loop records incidents and does not act on them (no I/O in the
core tests; the window's file and meshctl on a temporary state directory)."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_agent.ctl import main as ctl
from mesh_agent.mapek import (
    ActionKind,
    FixedPolicy,
    IncidentClass,
    LinkSample,
    MapeK,
    Observation,
)
from mesh_agent.mapek import maintenance as mw
from mesh_agent.mapek.loop import MAINTENANCE
from mesh_agent.mapek.plan import COLLATERAL_S


def obs(at: float, loss: float = 0.0, until: float | None = None) -> Observation:
    return Observation(at=at, links=(LinkSample("b", loss, 0.002),), maintenance_until=until)


def flap_obs(at: float, downs: int, failovers: int, until: float | None) -> Observation:
    return Observation(at=at, links=(LinkSample("b", 0.0, 0.002),), failovers_total=failovers,
                       link_downs=(("b", downs),) if downs else (), maintenance_until=until)


# -- the core ------------------------------------------------------------------------------
def test_an_incident_in_a_window_is_recorded_not_acted_on_and_teaches_nothing() -> None:
    loop = MapeK("a", "enforce", FixedPolicy(), 0.05)
    base = loop.thresholds.as_dict()
    losses = [0.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]
    steps = [loop.step(obs(i * 5.0, x, until=100.0)) for i, x in enumerate(losses)]
    [inc] = [i for s in steps for i in s.opened]
    assert (inc.cls, inc.action, inc.action_outcome) == (IncidentClass.LOSSY_LINK, "none",
                                                         MAINTENANCE)
    assert [i.id for s in steps for i in s.decided] == [inc.id]  # recorded once
    assert [o for s in steps for o in s.ops] == []
    [rec] = [i for s in steps for i in s.recovered]
    assert rec is inc and inc.mttr_s is not None
    # Not a fault: no statistics, no MTTR, no threshold change.
    assert loop.stats == {} and loop.mttr == {} and loop.recent == {}
    assert [t for s in steps for t in s.thresholds] == [] and loop.thresholds.as_dict() == base
    assert loop.actions_total == {("none", MAINTENANCE): 1}
    assert loop.analyzer.opened_total == {"lossy_link": 1}  # still counted as detected
    assert loop.in_maintenance


def test_an_incident_still_open_after_the_window_is_decided_then() -> None:
    loop = MapeK("a", "enforce", FixedPolicy(), 0.05)
    steps = []
    for i in range(12):  # the window ends at 30 s; the loss lasts until 55 s
        t = i * 5.0
        steps.append(loop.step(obs(t, 0.5 if 5.0 <= t < 60.0 else 0.0, until=30.0)))
    [inc] = [i for s in steps for i in s.opened]
    assert inc.detected_at == 10.0
    ops = [(i * 5.0, o.op, o.action.kind) for i, s in enumerate(steps) for o in s.ops]
    assert ops[0] == (30.0, "apply", ActionKind.QUARANTINE_LINK)  # the first sample after it
    assert (inc.action, inc.action_outcome, inc.decided_at) == ("quarantine_link", "applied",
                                                                30.0)
    assert [i for s in steps[:6] for i in s.decided] == [inc]
    assert inc in steps[6].decided
    for t in range(12, 30):
        loop.step(obs(t * 5.0))
    assert inc.recovered_at is not None
    # A real fault: its MTTR from the detection, and the action learns.
    assert inc.mttr_s == inc.recovered_at - 10.0
    assert loop.mttr["lossy_link"].count == 1
    assert loop.stats[("lossy_link", "quarantine_link")].tries == 1


def test_after_a_window_a_storm_is_attributed_to_the_flapping_link_opened_in_it() -> None:
    downs = [0, 0, 4, 8, 12, 16, 20, 24, 28, 32]
    failovers = [0, 0, 10, 20, 30, 40, 50, 60, 70, 80]
    loop = MapeK("a", "enforce", FixedPolicy(), 0.05)
    steps = [loop.step(flap_obs(i * 5.0, d, f, until=25.0))
             for i, (d, f) in enumerate(zip(downs, failovers, strict=True))]
    opened = {i.cls: i for s in steps for i in s.opened}
    flap, storm = opened[IncidentClass.FLAPPING_LINK], opened[IncidentClass.FAILOVER_STORM]
    assert flap.detected_at < 25.0 and storm.detected_at < 25.0
    assert (storm.action, storm.action_outcome, storm.cause) == ("none", "attributed", flap.id)
    assert flap.action == "hold_down_link" and flap.action_outcome == "applied"
    applied = [(i * 5.0, o.action.kind) for i, s in enumerate(steps) for o in s.ops
               if o.op == "apply"]
    assert applied == [(25.0, ActionKind.HOLD_DOWN_LINK)]


def test_a_window_leaves_an_action_in_force_to_its_own_undo() -> None:
    loop = MapeK("a", "enforce", FixedPolicy(), 0.05)
    steps = [loop.step(obs(i * 5.0, x)) for i, x in enumerate([0.0, 0.5, 0.5, 0.5])]
    assert [o.op for s in steps for o in s.ops] == ["apply"]
    # A window opens while the quarantine holds; the link recovers in it.
    later = [loop.step(obs(20.0 + i * 5.0, 0.0, until=1000.0)) for i in range(30)]
    assert [o.op for s in later for o in s.ops] == ["undo"]
    assert loop.stats[("lossy_link", "quarantine_link")].tries == 1  # opened before: learns


def test_an_incident_in_a_window_charges_no_earlier_action() -> None:
    """As test_mapek's charge test (c lossy 35 s after b's quarantine, nothing else open),
    which charges the quarantine; here c opens in a window and charges nothing."""
    b = [0.0, 0.5, 0.5, 0.5] + [0.0] * 26
    c = [0.0] * 9 + [0.5] * 3 + [0.0] * 18
    assert COLLATERAL_S > 35.0
    loop = MapeK("a", "enforce", FixedPolicy(), 0.05)
    for i, (lb, lc) in enumerate(zip(b, c, strict=True)):
        t = i * 5.0
        step = loop.step(Observation(at=t, links=(LinkSample("b", lb, 0.002),
                                                  LinkSample("c", lc, 0.002)),
                                     maintenance_until=1000.0 if t >= 40.0 else None))
        if "c" in {inc.target.name for inc in step.opened}:
            assert step.stats == []
            assert [i.action_outcome for i in step.opened] == [MAINTENANCE]
    s = loop.stats[("lossy_link", "quarantine_link")]
    assert (s.tries, s.successes) == (1, 1)  # b's own recovery only
    assert loop.analyzer.opened_total == {"lossy_link": 2}


@settings(max_examples=60, deadline=None)
@given(losses=st.lists(st.sampled_from([0.0, 0.5]), min_size=5, max_size=40),
       windows=st.lists(st.booleans(), min_size=5, max_size=40))
def test_nothing_is_applied_for_an_incident_while_a_window_is_open(losses, windows) -> None:
    """Any loss pattern, any window pattern: an action only ever starts at a sample outside
    a window, and every incident opened in one is decided ``maintenance`` first."""
    loop = MapeK("a", "enforce", FixedPolicy(), 0.05)
    for i, (x, w) in enumerate(zip(losses, windows, strict=False)):
        t = i * 5.0
        step = loop.step(obs(t, x, until=t + 1.0 if w else None))
        if w:
            assert [o for o in step.ops if o.op == "apply"] == []
            assert all(inc.action_outcome == MAINTENANCE for inc in step.opened)
        else:
            assert all(inc.action_outcome != MAINTENANCE for inc in loop.analyzer.open.values())


# -- the window's file ---------------------------------------------------------------------
def test_a_window_is_validated() -> None:
    assert mw.window(60, "rollout", 1000.0) == mw.Window(1000.0, 1060.0, "rollout")
    for seconds in (0, -5, mw.MAX_S + 1):
        with pytest.raises(mw.WindowError, match="at most"):
            mw.window(seconds, "", 0.0)
    with pytest.raises(mw.WindowError, match="one line"):
        mw.window(60, "a\nb", 0.0)


def test_the_file_round_trips_and_is_readable_by_the_agent(tmp_path: Path) -> None:
    assert mw.read(tmp_path) is None and not mw.clear(tmp_path)
    p = mw.write(tmp_path, mw.window(600, "kernel", 1_000.0))
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    os.utime(p, (1_000.0, 1_000.0))
    w = mw.read(tmp_path)
    assert w == mw.Window(1_000.0, 1_600.0, "kernel")
    assert w.open_at(1_300.0) and not w.open_at(1_600.0) and not w.open_at(900.0)
    assert mw.clear(tmp_path) and mw.read(tmp_path) is None


@pytest.mark.parametrize("text,why", [
    ("{", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"since": 1, "until": "later"}', "must be numbers"),
    ('{"since": 1, "until": true}', "must be numbers"),
    ('{"since": 10, "until": 5}', "not after since"),
    ('{"since": 1, "until": 5, "reason": 3}', "reason must be a string"),
])
def test_a_broken_file_is_an_error_that_names_it(tmp_path: Path, text: str, why: str) -> None:
    mw.path(tmp_path).write_text(text)
    with pytest.raises(mw.WindowError, match=why) as exc:
        mw.read(tmp_path)
    assert str(mw.path(tmp_path)) in str(exc.value)


def test_a_window_never_lasts_past_its_cap_after_the_file_was_written(tmp_path: Path) -> None:
    """A hand-written file with an end years away still ends MAX_S after it was written."""
    p = mw.path(tmp_path)
    p.write_text(json.dumps({"since": 1_000.0, "until": 1e12, "reason": "forgotten"}))
    os.utime(p, (2_000.0, 2_000.0))
    w = mw.read(tmp_path)
    assert w is not None and w.until == 2_000.0 + mw.MAX_S


# -- meshctl maintenance -------------------------------------------------------------------
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "config.yml"
    cfg.write_text(f"node_name: a\nnode_address: 10.77.0.1\nstate_dir: {tmp_path}\n")
    return cfg


def meshctl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    import contextlib

    with contextlib.redirect_stderr(err):
        rc = ctl.main(list(argv), out=out)
    return rc, out.getvalue(), err.getvalue()


def test_meshctl_opens_shows_and_closes_a_window(tmp_path: Path) -> None:
    cfg = str(config(tmp_path))
    assert meshctl("--config", cfg, "maintenance")[:2] == (0, "no maintenance window open\n")
    rc, out, _ = meshctl("--config", cfg, "maintenance", "start", "--for", "30m",
                         "--reason", "kernel upgrade")
    assert rc == 0 and "maintenance window open until" in out and "kernel upgrade" in out
    w = mw.read(tmp_path)
    assert w is not None and w.until - w.since == 1800 and w.reason == "kernel upgrade"
    rc, out, _ = meshctl("--config", cfg, "--json", "maintenance", "show")
    assert rc == 0 and json.loads(out) == {"open": True, **w.as_dict()}
    rc, out, _ = meshctl("--config", cfg, "maintenance", "end")
    assert (rc, out) == (0, "no maintenance window open (closed now)\n")
    assert mw.read(tmp_path) is None


def test_meshctl_refuses_a_window_too_long_or_a_remote_node(tmp_path: Path) -> None:
    cfg = str(config(tmp_path))
    rc, _, err = meshctl("--config", cfg, "maintenance", "start", "--for", "5h")
    assert rc == 1 and "at most 14400 s (4 h)" in err and mw.read(tmp_path) is None
    rc, _, err = meshctl("--node", "10.0.0.1", "maintenance", "start", "--for", "1h")
    assert rc == 2 and "node's own files" in err
    rc, _, err = meshctl("--config", str(tmp_path / "missing.yml"), "maintenance")
    assert rc == 2 and "meshctl:" in err
