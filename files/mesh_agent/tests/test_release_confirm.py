"""Node-local commit-confirm: the core (injected time) and its shell (files, revert).

No systemd, no agent, no root: the clock, the checks and the restart are injected,
the install root is a temporary directory holding fake releases."""

from __future__ import annotations

import io
import json
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_agent.ctl import release as release_ctl
from mesh_agent.ctl.main import build_parser
from mesh_agent.release import watch as watch_mod
from mesh_agent.release.confirm import (
    MAX_WINDOW_S,
    Confirm,
    ConfirmFormatError,
    GiveUp,
    Observation,
    Pending,
    Revert,
    Superseded,
    Wait,
    rebase,
    step,
)
from mesh_agent.release.store import Releases

GOOD = Observation(ready=True, neighbors_up=2, reach_ok=None, current="new")
NOT_READY = replace(GOOD, ready=False)


def pending(**kw: object) -> Pending:
    base: dict[str, object] = dict(release="new", previous="old", switched_at=1000.0,
                                   boot_id="boot-1", switched_boottime=50.0, window_s=120.0,
                                   hold_s=5.0)
    base.update(kw)
    return Pending(**base)  # type: ignore[arg-type]


# -- the core -------------------------------------------------------------------

def test_confirms_once_every_check_held_for_the_hold_time() -> None:
    p = pending()
    p, d = step(p, GOOD, 60.0)
    assert isinstance(d, Wait) and d.remaining_s == pytest.approx(110.0)
    p, d = step(p, GOOD, 64.9)
    assert isinstance(d, Wait)
    p, d = step(p, GOOD, 65.0)
    assert isinstance(d, Confirm) and "after 15.0 s" in d.reason


def test_a_ready_flicker_restarts_the_hold() -> None:
    p = pending()
    p, _ = step(p, GOOD, 60.0)
    p, d = step(p, NOT_READY, 63.0)
    assert isinstance(d, Wait) and d.failing == ("agent not ready",)
    p, d = step(p, GOOD, 64.0)
    p, d = step(p, GOOD, 68.0)
    assert isinstance(d, Wait)  # held 4 s since the flicker, not 8
    p, d = step(p, GOOD, 69.0)
    assert isinstance(d, Confirm)


@pytest.mark.parametrize("obs, why", [
    (NOT_READY, "agent not ready"),
    (replace(GOOD, neighbors_up=0), "0 neighbours up, 1 expected"),
    (replace(GOOD, reach_ok=False), "no controller or gateway answers (10.0.0.1)"),
])
def test_reverts_to_the_previous_release_when_the_window_passes(obs: Observation,
                                                                why: str) -> None:
    p = pending(reach=("10.0.0.1",))
    p, d = step(p, obs, 169.9)
    assert isinstance(d, Wait)
    p, d = step(p, obs, 170.0)
    assert d == Revert("old", f"not confirmed within 120 s: {why}")


def test_the_expected_neighbour_count_is_configurable() -> None:
    p = pending(expect_neighbors=3, hold_s=0.0)
    assert isinstance(step(p, GOOD, 60.0)[1], Wait)  # 2 up, 3 expected
    assert isinstance(step(p, replace(GOOD, neighbors_up=3), 60.0)[1], Confirm)


def test_without_a_previous_release_it_gives_up_instead_of_reverting() -> None:
    _, d = step(pending(previous=None), NOT_READY, 500.0)
    assert isinstance(d, GiveUp) and "no previous release" in d.reason


def test_a_hand_switch_supersedes_the_pending_one() -> None:
    _, d = step(pending(), replace(GOOD, current="other"), 60.0)
    assert d == Superseded("other")


@pytest.mark.parametrize("window", [0.0, -1.0, MAX_WINDOW_S + 0.1, 600.0])
def test_the_window_is_bounded(window: float) -> None:
    with pytest.raises(ConfirmFormatError, match="<= 120 s"):
        pending(window_s=window)


def test_record_round_trip_and_garbage() -> None:
    p = pending(reach=("gw:22",), elapsed_s=3.0, healthy_since=55.0)
    assert Pending.from_json(p.to_json()) == p
    newer = json.loads(p.to_json()) | {"from_a_newer_release": 1}
    assert Pending.from_json(json.dumps(newer).encode()) == p
    for junk in (b"", b"[]", b"{}", b'{"release": "x"}', b"\xff"):
        with pytest.raises(ConfirmFormatError):
            Pending.from_json(junk)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3), max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.dictionaries(st.sampled_from(
                     ["release", "previous", "switched_at", "boot_id", "switched_boottime",
                      "window_s", "expect_neighbors", "reach", "hold_s", "elapsed_s", "x"]),
                     json_values).map(lambda d: json.dumps(d).encode())))
def test_any_bytes_load_or_are_refused(data: bytes) -> None:
    """A damaged record never crashes the watcher with anything but ConfirmFormatError,
    and a record that loads can be stepped."""
    try:
        p = Pending.from_json(data)
    except ConfirmFormatError:
        return
    for obs in (GOOD, NOT_READY, replace(GOOD, current=p.release)):
        step(p, obs, p.switched_boottime + p.window_s / 2)
        step(p, obs, p.switched_boottime + p.window_s)


def test_rebase_after_a_reboot_counts_the_wall_clock_time_since_the_switch() -> None:
    p = pending(elapsed_s=30.0)
    q = rebase(p, "boot-2", boottime=8.0, wall=1000.0 + 70.0)
    assert q.boot_id == "boot-2" and q.switched_boottime == pytest.approx(8.0 - 70.0)
    assert step(q, NOT_READY, 8.0 + 49.9)[1].__class__ is Wait
    assert isinstance(step(q, NOT_READY, 8.0 + 50.0)[1], Revert)  # 70 + 50 = 120


def test_rebase_with_a_clock_that_went_back_keeps_the_persisted_elapsed_time() -> None:
    q = rebase(pending(elapsed_s=30.0), "boot-2", boottime=8.0, wall=10.0)
    assert q.switched_boottime == pytest.approx(8.0 - 30.0)
    assert rebase(q, "boot-2", 99.0, 0.0) is q  # same boot: nothing to do


observations = st.builds(Observation, ready=st.booleans(),
                         neighbors_up=st.integers(0, 3),
                         reach_ok=st.sampled_from([None, True, False]),
                         current=st.just("new"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 30.0), observations), min_size=1, max_size=40),
       st.floats(1.0, MAX_WINDOW_S), st.floats(0.0, 10.0))
def test_never_confirms_late_never_waits_past_the_window(
        seq: list[tuple[float, Observation]], window: float, hold: float) -> None:
    """For any observations at any non-decreasing times: the first decision that is not
    Wait is Revert exactly when the window is used up, Confirm only before it and only
    after every check held for hold_s."""
    hold = min(hold, window / 2)
    p = pending(window_s=window, hold_s=hold)
    t, healthy_since = p.switched_boottime, None
    for dt, obs in seq:
        t += dt
        healthy_since = None if obs.failing(p) else (healthy_since if healthy_since is not None
                                                     else t)
        p, d = step(p, obs, t)
        used = t - p.switched_boottime
        if used >= window:
            assert isinstance(d, Revert) and d.to == "old"
            return
        if isinstance(d, Confirm):
            assert healthy_since is not None and t - healthy_since >= hold
            return
        assert isinstance(d, Wait) and d.remaining_s == pytest.approx(window - used)


# -- the shell: files, watcher, revert ----------------------------------------------

def make_release(root: Path, rid: str, *, watcher: bool = True, wire: int = 2) -> None:
    site = root / "releases" / rid / "venv" / "lib" / "python3.11" / "site-packages" / "mesh_agent"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text(f'__version__ = "1.0.0"\nWIRE_VERSION = {wire}\n')
    if watcher:
        (site / "release").mkdir()
        (site / "release" / "watch.py").write_text("")


@dataclass
class FakeClock:
    """Boot time advances only through sleep(); the wall clock follows it."""

    t: float = 100.0
    wall0: float = 1_700_000_000.0
    boot: str = "boot-1"
    slept: list[float] = field(default_factory=list)

    def clock(self) -> watch_mod.Clock:
        return watch_mod.Clock(wall=lambda: self.wall0 + self.t, boottime=lambda: self.t,
                               boot_id=lambda: self.boot)

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Releases]:
    root = tmp_path / "opt"
    make_release(root, "old")
    make_release(root, "new")
    rel = Releases(root)
    rel.use("old", lambda: None)
    return root, rel


def meshctl(root: Path, clock: FakeClock, *argv: str, restarts: list[str] | None = None,
            started: list[int] | None = None, settings_file: Path | None = None) -> tuple[int, str]:
    args = build_parser().parse_args(["--json", "release", "--root", str(root), *argv])
    if getattr(args, "confirm_settings", None) is not None:
        args.confirm_settings = settings_file or root / "no-such-settings.json"
    out = io.StringIO()
    rc = release_ctl.run(args, out, restart=lambda: (restarts or []).append("restart"),
                         clock=clock.clock(),
                         start_watcher=lambda: (started if started is not None else []).append(1))
    return rc, out.getvalue()


def test_use_arms_the_switch_and_starts_the_watcher(node: tuple[Path, Releases]) -> None:
    root, _rel = node
    clock, started = FakeClock(), list[int]()
    settings_file = root / "release-confirm.json"
    settings_file.write_text(json.dumps({"window_s": 90, "expect_neighbors": 2,
                                         "reach": ["10.9.0.1:22"]}))
    rc, out = meshctl(root, clock, "use", "new", started=started, settings_file=settings_file)
    assert rc == 0 and json.loads(out)["confirm_within"] == 90
    p = watch_mod.ConfirmFiles(root).load_pending()
    assert p is not None and (p.release, p.previous, p.window_s, p.expect_neighbors, p.reach) == (
        "new", "old", 90.0, 2, ("10.9.0.1:22",))
    assert started == [1]
    # the previous release has the watcher, so it runs it: a broken new one cannot
    assert (root / "confirm-runner").resolve() == (root / "releases/old/venv").resolve()


def test_a_release_that_dies_at_start_is_still_armed(
        node: tuple[Path, Releases], capsys: pytest.CaptureFixture[str]) -> None:
    """systemctl restart of the Type=notify unit fails when the new agent dies before
    READY=1: current already points at it, so the switch is armed for its revert and
    meshctl says what happened with a non-zero exit."""
    root, rel = node
    settings_file = root / "release-confirm.json"
    settings_file.write_text(json.dumps({"window_s": 60}))
    args = build_parser().parse_args(["release", "--root", str(root), "use", "new",
                                      "--confirm-settings", str(settings_file)])

    def dies() -> None:
        raise subprocess.CalledProcessError(1, ["systemctl", "restart", "mesh-agent.service"])

    started: list[int] = []
    rc = release_ctl.run(args, io.StringIO(), restart=dies, clock=FakeClock().clock(),
                         start_watcher=lambda: started.append(1))
    assert rc != 0 and rel.current_id() == "new"
    p = watch_mod.ConfirmFiles(root).load_pending()
    assert p is not None and (p.release, p.previous, p.window_s) == ("new", "old", 60.0)
    assert started == [1]
    err = capsys.readouterr().err
    assert "did not start" in err and "reverts to old unless confirmed within 60 s" in err


@pytest.mark.parametrize("settings, argv", [
    ({}, ["--confirm-within", "600"]),
    ({"window_s": 121}, []),
    ({"window_s": 10, "hold_s": 10}, []),
    ({"expect_neighbors": -1}, []),
])
def test_use_refuses_bad_settings_before_switching(
        node: tuple[Path, Releases], settings: dict[str, float], argv: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    root, rel = node
    path = root / "release-confirm.json"
    path.write_text(json.dumps(settings))
    rc, _ = meshctl(root, FakeClock(), "use", "new", *argv, settings_file=path)
    assert rc == 1 and rel.current_id() == "old"
    assert "must be" in capsys.readouterr().err


def test_the_runner_is_the_new_release_when_the_old_one_predates_the_watcher(
        tmp_path: Path) -> None:
    root = tmp_path / "opt"
    make_release(root, "old", watcher=False)
    make_release(root, "new")
    rel = Releases(root)
    rel.use("old", lambda: None)
    meshctl(root, FakeClock(), "use", "new")
    assert (root / "confirm-runner").resolve() == (root / "releases/new/venv").resolve()


def test_unconfirmed_switch_reverts_by_itself(node: tuple[Path, Releases]) -> None:
    root, rel = node
    clock = FakeClock()
    meshctl(root, clock, "use", "new")
    restarts: list[str] = []
    seen: list[float] = []

    def observe(p: Pending, _budget: float) -> Observation:
        seen.append(clock.t)
        return Observation(ready=False, neighbors_up=0, reach_ok=None, current=rel.current_id())

    d = watch_mod.watch(rel, observe, lambda: restarts.append("restart"), clock.clock(),
                        sleep=clock.sleep)
    assert isinstance(d, Revert) and d.to == "old"
    assert rel.current_id() == "old" and restarts == ["restart"]
    assert clock.t - 100.0 == pytest.approx(watch_mod.DEFAULT_WINDOW_S)  # at the deadline
    status = watch_mod.ConfirmFiles(root).status()
    assert status["pending"] is None
    assert status["last"]["outcome"] == "reverted" and "agent not ready" in status["last"]["reason"]


def test_healthy_switch_is_confirmed_and_a_switch_back_is_not_armed(
        node: tuple[Path, Releases]) -> None:
    root, rel = node
    clock = FakeClock()
    meshctl(root, clock, "use", "new")
    d = watch_mod.watch(rel, lambda p, _b: replace(GOOD, current=rel.current_id()), lambda: None,
                        clock.clock(), sleep=clock.sleep)
    assert isinstance(d, Confirm)
    files = watch_mod.ConfirmFiles(root)
    assert files.load_pending() is None and files.confirmed() == ["new"]
    # old was never confirmed here, so going back to it is armed; new again is not
    meshctl(root, clock, "use", "old")
    assert files.load_pending() is not None
    meshctl(root, clock, "use", "new")
    assert files.load_pending() is None
    assert files.status()["last"]["outcome"] == "superseded"


def test_a_killed_watcher_resumes_the_same_window(node: tuple[Path, Releases]) -> None:
    root, rel = node
    clock = FakeClock()
    meshctl(root, clock, "use", "new")

    class Killed(Exception):
        pass

    def dies_at_40s(p: Pending, _budget: float) -> Observation:
        if clock.t >= 140.0:
            raise Killed
        return replace(NOT_READY, current=rel.current_id())

    with pytest.raises(Killed):
        watch_mod.watch(rel, dies_at_40s, lambda: None, clock.clock(), sleep=clock.sleep)
    clock.t += 15.0  # systemd restarts it a while later
    d = watch_mod.watch(rel, lambda p, _b: replace(NOT_READY, current=rel.current_id()),
                        lambda: None, clock.clock(), sleep=clock.sleep)
    assert isinstance(d, Revert)
    assert clock.t - 100.0 == pytest.approx(watch_mod.DEFAULT_WINDOW_S)


def test_a_reboot_keeps_the_window(node: tuple[Path, Releases]) -> None:
    root, rel = node
    clock = FakeClock()
    meshctl(root, clock, "use", "new")
    # 30 s later the node reboots; 25 s of boot; boot time restarts from 0
    clock.boot, clock.wall0, clock.t = "boot-2", clock.wall0 + 100.0 + 30.0 + 25.0, 0.0
    d = watch_mod.watch(rel, lambda p, _b: replace(NOT_READY, current=rel.current_id()),
                        lambda: None, clock.clock(), sleep=clock.sleep)
    assert isinstance(d, Revert)
    assert clock.t == pytest.approx(watch_mod.DEFAULT_WINDOW_S - 55.0)


def test_confirm_by_hand_stops_the_watcher(node: tuple[Path, Releases]) -> None:
    root, rel = node
    clock = FakeClock()
    meshctl(root, clock, "use", "new")

    def observe(p: Pending, _budget: float) -> Observation:
        if clock.t >= 110.0:
            assert meshctl(root, clock, "confirm")[1].strip() == '{"confirmed": "new"}'
        return replace(NOT_READY, current=rel.current_id())

    assert watch_mod.watch(rel, observe, lambda: None, clock.clock(), sleep=clock.sleep) is None
    assert rel.current_id() == "new"
    assert watch_mod.ConfirmFiles(root).confirmed() == ["new"]


def test_a_revert_interrupted_after_the_switch_is_recorded_on_resume(
        node: tuple[Path, Releases]) -> None:
    root, rel = node
    clock = FakeClock()
    meshctl(root, clock, "use", "new")
    rel.use("old", lambda: None)  # the revert switched, then the watcher was killed
    d = watch_mod.watch(rel, lambda p, _b: replace(NOT_READY, current=rel.current_id()),
                        lambda: None, clock.clock(), sleep=clock.sleep)
    assert d == Superseded("old")
    assert watch_mod.ConfirmFiles(root).status()["last"]["outcome"] == "reverted"


def test_prune_keeps_the_release_a_pending_switch_reverts_to(tmp_path: Path) -> None:
    root = tmp_path / "opt"
    for rid in ("a", "b", "c"):
        make_release(root, rid)
    rel = Releases(root)
    rel.use("a", lambda: None)
    clock = FakeClock()
    meshctl(root, clock, "use", "c")
    rc, out = meshctl(root, clock, "prune", "--keep", "0")
    assert rc == 0 and json.loads(out)["removed"] == ["b"]
    assert rel.ids() == ["a", "c"]


def test_observe_reads_readyz_and_the_targets(node: tuple[Path, Releases]) -> None:
    _root, rel = node

    class Api:
        def __init__(self, status: int, body: object) -> None:
            self.status, self.body = status, body

        def get(self, path: str, ok: tuple[int, ...] = (200,)) -> tuple[int, object]:
            assert path == "/readyz"
            return self.status, self.body

    p = pending(reach=("a", "b"))
    obs = watch_mod.observe(rel, p, Api(200, {"ready": True,  # type: ignore[arg-type]
                                              "detail": {"neighbors_up": 3}}),
                            reach=lambda t: t == "b")
    assert obs == Observation(ready=True, neighbors_up=3, reach_ok=True, current="old")
    obs = watch_mod.observe(rel, pending(), Api(503, "garbage"),  # type: ignore[arg-type]
                            reach=lambda t: True)
    assert obs == Observation(ready=False, neighbors_up=0, reach_ok=None, current="old")


def test_wait_ready_polls_readyz_until_ready_or_the_timeout() -> None:
    from mesh_agent.ctl.client import AgentUnreachable

    clock = FakeClock()
    answers: list[object] = [AgentUnreachable("restarting"), 503, 503, 200]

    class Api:
        def get(self, path: str, ok: tuple[int, ...] = (200,)) -> tuple[int, object]:
            a = answers.pop(0) if answers else 503
            if isinstance(a, Exception):
                raise a
            return int(a), {}  # type: ignore[call-overload]

    got = release_ctl.wait_ready(Api(), 10.0, clock.clock(), clock.sleep)  # type: ignore[arg-type]
    assert got == pytest.approx(1.5)  # three polls 0.5 s apart before the 200
    answers[:] = []
    assert release_ctl.wait_ready(Api(), 3.0, clock.clock(), clock.sleep) is None  # type: ignore[arg-type]


def test_an_unreadable_record_is_moved_aside_not_retried_forever(
        node: tuple[Path, Releases]) -> None:
    root, rel = node
    (root / watch_mod.PENDING_FILE).write_text('{"release": 1}')
    with pytest.raises(ConfirmFormatError):
        watch_mod.watch(rel, lambda p, _b: GOOD, lambda: None, FakeClock().clock())
    assert not (root / watch_mod.PENDING_FILE).exists()  # the unit's condition fails now
    assert (root / f"{watch_mod.PENDING_FILE}.bad").exists() and rel.current_id() == "old"


def test_meshctl_confirm_watch_and_status(node: tuple[Path, Releases],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line end to end (the unit's ExecStart), with the agent's answers,
    the clock and the restart injected."""
    root, rel = node
    clock = FakeClock()
    meshctl(root, clock, "use", "new")
    rc, out = meshctl(root, clock, "confirm-status")
    assert rc == 0 and json.loads(out)["pending"]["release"] == "new"
    monkeypatch.setattr(watch_mod, "observe",
                        lambda releases, p, api, budget_s=2.0: replace(NOT_READY,
                                                                       current=rel.current_id()))
    restarts: list[str] = []
    args = build_parser().parse_args(["--json", "--config", str(root / "none.yml"), "release",
                                      "--root", str(root), "confirm-watch"])
    out_io = io.StringIO()
    assert release_ctl.run(args, out_io, restart=lambda: restarts.append("r"),
                           clock=clock.clock(), sleep=clock.sleep) == 0
    assert json.loads(out_io.getvalue())["decision"] == "revert"
    assert restarts == ["r"] and rel.current_id() == "old"
    rc, out = meshctl(root, clock, "confirm-status")
    assert json.loads(out)["last"]["outcome"] == "reverted"


def test_the_real_clocks_revert_at_the_window(node: tuple[Path, Releases]) -> None:
    """This machine's CLOCK_BOOTTIME, boot id and sleep (no injection but the agent's
    answers and the restart): a 2 s window reverts 2 s after the switch, late by at most
    a check interval plus the machine's scheduling delay."""
    import time

    _, rel = node
    clock = watch_mod.Clock()
    p = watch_mod.arm(rel, "old", "new", watch_mod.Settings(window_s=2.0, hold_s=0.5),
                      clock, lambda: None)
    assert p is not None
    rel.use("new", lambda: None)  # arm() records the switch; the switch itself
    start = time.monotonic()
    d = watch_mod.watch(rel, lambda p, _b: replace(NOT_READY, current=rel.current_id()),
                        lambda: None, clock, interval_s=0.1)
    took = time.monotonic() - start
    assert isinstance(d, Revert) and rel.current_id() == "old"
    print(f"reverted {took:.2f} s after a switch with a 2 s window")
    assert 1.8 <= took <= 3.5, took  # a loaded 2-core machine: allow scheduling delay


@pytest.mark.parametrize("interval", [0.3, 1.0, 7.0])
def test_checks_that_time_out_do_not_stretch_the_window(node: tuple[Path, Releases],
                                                        interval: float) -> None:
    """An isolated node: every check runs into its timeout. Each observation takes the
    whole budget it is given, and the revert is still decided within MIN_OBSERVE_S of
    the window's end (it was a check interval plus 2-3 s of ping timeouts late: 123.5 s
    for a 120 s window in the lab)."""
    root, rel = node
    clock = FakeClock()
    meshctl(root, clock, "use", "new")
    budgets: list[float] = []

    def isolated(p: Pending, budget: float) -> Observation:
        assert watch_mod.MIN_OBSERVE_S <= budget <= watch_mod.OBSERVE_TIMEOUT_S
        budgets.append(budget)
        clock.t += budget  # every check timed out
        return replace(NOT_READY, current=rel.current_id())

    d = watch_mod.watch(rel, isolated, lambda: None, clock.clock(), sleep=clock.sleep,
                        interval_s=interval)
    assert isinstance(d, Revert) and rel.current_id() == "old"
    late = clock.t - 100.0 - watch_mod.DEFAULT_WINDOW_S
    assert 0.0 <= late <= watch_mod.MIN_OBSERVE_S + 1e-9, late


def test_observe_is_bounded_by_its_budget_and_one_target_is_enough(
        node: tuple[Path, Releases]) -> None:
    """Real threads and a real clock: a hung agent API and a target that never answers
    cost the budget, not their own timeouts; an answering target ends the wait early."""
    import threading
    import time

    _root, rel = node
    release = threading.Event()

    class HungApi:
        def get(self, path: str, ok: tuple[int, ...] = (200,)) -> tuple[int, object]:
            release.wait(10.0)
            return 200, {"ready": True, "detail": {"neighbors_up": 1}}

    class Api:
        def get(self, path: str, ok: tuple[int, ...] = (200,)) -> tuple[int, object]:
            return 200, {"ready": True, "detail": {"neighbors_up": 2}}

    def reach(t: str) -> bool:
        if t == "up":
            return True
        release.wait(10.0)
        return True

    try:
        start = time.monotonic()
        obs = watch_mod.observe(rel, pending(reach=("dead-1", "dead-2")), HungApi(),  # type: ignore[arg-type]
                                reach=reach, budget_s=0.3)
        took = time.monotonic() - start
        assert obs == Observation(ready=False, neighbors_up=0, reach_ok=False, current="old")
        assert took < 2.0, took  # the hung checks would hold it 10 s
        start = time.monotonic()
        obs = watch_mod.observe(rel, pending(reach=("dead-1", "up")), Api(),  # type: ignore[arg-type]
                                reach=reach, budget_s=5.0)
        took = time.monotonic() - start
        assert obs == Observation(ready=True, neighbors_up=2, reach_ok=True, current="old")
        assert took < 2.0, took  # did not wait for dead-1
    finally:
        release.set()
