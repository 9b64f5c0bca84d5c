"""Two small policies on their own: hello stretching (link) and SPF back-off (paths)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh_agent.link.stretch import HELLO_STRETCH_MAX, STARTUP_GRACE_S, HelloStretch
from mesh_agent.paths.schedule import SPF_HOLD_MAX_S, SPF_QUIET_S, ComputeSchedule


def test_late_hello_timer_stretches_the_announced_interval() -> None:
    s = HelloStretch(0.05, 3, started_at=0.0)
    assert s.timer_fired(0.3, 0.0).announced_s == 0.05  # still starting up (our imports)
    now = 10.0
    assert s.timer_fired(0.04, now).announced_s == 0.05  # jitter within one interval
    # 90 ms late (a CPU burst): the hello still lands within the peers' 3 x 50 ms
    assert s.timer_fired(0.09, now).announced_s == 0.05
    stretched = s.timer_fired(0.3, now)  # starved for 300 ms: 50 + 600 ms, capped at 500
    assert stretched.announced_s == 0.5 and stretched.started
    again = s.timer_fired(0.3, now)
    assert again.announced_s == 0.5 and not again.started  # already stretched: no new warning
    now += 1.0  # one half-life later the worst lag counts half
    assert s.timer_fired(0.0, now).announced_s == pytest.approx(0.05 + 2 * 0.15)
    now += 100.0
    assert s.timer_fired(0.0, now).announced_s == pytest.approx(0.05, abs=1e-3)


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 5)), max_size=50))
def test_stretch_stays_between_the_interval_and_its_cap(steps: list[tuple[float, float]]) -> None:
    s = HelloStretch(0.05, 3, started_at=0.0)
    now = STARTUP_GRACE_S
    for late, dt in steps:
        now += dt
        announced = s.timer_fired(late, now).announced_s
        assert 0.05 <= announced <= HELLO_STRETCH_MAX * 0.05 + 1e-12


def test_a_floor_holds_the_announced_interval_until_lifted() -> None:
    """The self-healing loop's input (lengthen_hello): a lower bound, capped like a stretch."""
    s = HelloStretch(0.05, 3, started_at=0.0)
    s.set_floor(0.1)
    assert s.timer_fired(0.0, 10.0).announced_s == 0.1
    assert s.timer_fired(0.3, 10.0).announced_s == 0.5  # a real stretch still goes above
    s.set_floor(60.0)
    assert s.floor_s == HELLO_STRETCH_MAX * 0.05
    s.set_floor(0.0)
    assert s.timer_fired(0.0, 200.0).announced_s == pytest.approx(0.05, abs=1e-3)
    assert s.lag_s == pytest.approx(0.0, abs=1e-3)


def test_spf_backoff_is_immediate_when_quiet_and_doubles_in_a_storm() -> None:
    sched = ComputeSchedule()
    now = 100.0
    assert sched.delay(now) == 0.0  # first change: compute at once
    delays = []
    for _ in range(7):  # a storm: a change every 10 ms
        now += 0.01
        delays.append(sched.delay(now))
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    now += 5.0  # quiet again
    assert sched.delay(now) == 0.0


@given(st.lists(st.floats(0, 3), max_size=60))
def test_spf_hold_is_bounded_and_resets_after_quiet(gaps: list[float]) -> None:
    sched = ComputeSchedule()
    now = 0.0
    for gap in gaps:
        now += gap
        hold = sched.delay(now)
        assert 0.0 <= hold <= SPF_HOLD_MAX_S
        if gap >= SPF_QUIET_S + SPF_HOLD_MAX_S:
            assert hold == 0.0


def test_paths_are_current_only_when_no_change_came_during_a_computation() -> None:
    sched = ComputeSchedule()
    assert not sched.current  # nothing computed yet
    sched.changed(0.0)
    started = sched.start()
    sched.changed(0.1)  # a change while computing
    sched.finished(started)
    assert not sched.current
    sched.finished(sched.start())
    assert sched.current and sched.computations_total == 2


def test_pending_time_counts_from_the_oldest_change_no_computation_covers() -> None:
    sched = ComputeSchedule()
    assert sched.pending_s(5.0) == 0.0
    sched.changed(10.0)
    sched.changed(10.5)  # the same pending computation covers both
    assert sched.pending_s(11.0) == 1.0
    gen = sched.start()
    sched.changed(11.2)  # arrives while computing: not covered by it
    sched.changed(11.3)
    sched.finished(gen)
    assert not sched.current and sched.pending_s(12.0) == pytest.approx(0.8)
    sched.finished(sched.start())
    assert sched.current and sched.pending_s(13.0) == 0.0


def test_a_steady_stream_of_changes_keeps_paths_not_current_but_never_stale() -> None:
    """What a 50-node mesh under load can do to readiness: a change every 300 ms (link
    costs flapping somewhere in the mesh), each computation taking 400 ms.

    The compute loop of ``routing.py`` stepped in 10 ms ticks: ``current`` (the readiness
    check ``paths_current``) is false at most instants although every change is computed
    within a bounded time; the pending time tells this flicker from stuck paths.
    """
    sched = ComputeSchedule()
    tick, compute_ticks, change_every = 0.01, 40, 30
    phase, until, gen, dirty = "idle", 0, 0, False
    samples: list[tuple[bool, float]] = []
    for n in range(1, 6000):  # 60 s
        now = n * tick
        if n % change_every == 0:
            sched.changed(now)
            dirty = True
        if phase == "idle" and dirty:
            phase, until = "hold", n + round(sched.delay(now) / tick)
        if phase == "hold" and n >= until:
            dirty, gen = False, sched.start()
            phase, until = "compute", n + compute_ticks
        elif phase == "compute" and n >= until:
            sched.finished(gen)
            phase = "idle"
        if n > 1000 and n % 5 == 0:  # the steady state polls; after the first 10 s
            samples.append((sched.current, sched.pending_s(now)))
    not_current = sum(1 for ok, _ in samples if not ok) / len(samples)
    worst = max(p for _, p in samples)
    assert not_current > 0.9  # readiness false at nearly every poll ...
    bound = SPF_HOLD_MAX_S + 2 * compute_ticks * tick + change_every * tick
    assert worst <= bound  # ... though no change waits longer than a hold and two computations
    assert sched.computations_total > 30
