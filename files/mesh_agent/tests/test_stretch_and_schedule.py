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
    sched.changed()
    started = sched.start()
    sched.changed()  # a change while computing
    sched.finished(started)
    assert not sched.current
    sched.finished(sched.start())
    assert sched.current and sched.computations_total == 2
