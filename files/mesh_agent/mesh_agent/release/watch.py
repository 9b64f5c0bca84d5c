"""The shell around :mod:`mesh_agent.release.confirm`: files, clocks, checks, revert.

Files under the install root (``/opt/mesh-agent``), each replaced atomically
(write, fsync, rename), so a ``kill -9`` or a power cut leaves the old or the new
content:

``confirm-pending.json``
    the pending switch (:class:`~mesh_agent.release.confirm.Pending`); present
    only while a switch waits. ``mesh-release-confirm.service`` has
    ``ConditionPathExists=`` on it, so after a reboot the watcher resumes.
``confirm-state.json``
    the releases this node confirmed (a switch back to one of them is not armed:
    it is a rollback to a known-good release) and the last outcome, read by
    ``meshctl release confirm-status`` and the rollout's gate.
``confirm-runner``
    a link to the venv whose ``meshctl`` runs the watcher: the *previous*
    release's when it has the watcher, so a broken new release cannot break its
    own revert.

Ending a pending switch (confirm, revert, give up, superseded) starts by renaming
``confirm-pending.json`` away: rename(2) succeeds once, so two endings cannot both be
recorded. A revert switches first and records after (a kill in between is recorded on
the next run); it checks the record is still there just before switching, so a hand
confirm wins unless it lands in the instant between that check and the switch (then
the node reverts and the record says confirmed).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mesh_agent.ctl.client import AgentUnreachable, ApiError, HttpClient
from mesh_agent.release.confirm import (
    DEFAULT_HOLD_S,
    DEFAULT_WINDOW_S,
    MAX_WINDOW_S,
    Confirm,
    ConfirmFormatError,
    Decision,
    GiveUp,
    Observation,
    Pending,
    Revert,
    Superseded,
    Wait,
    as_dict,
    elapsed,
    rebase,
    step,
)
from mesh_agent.release.store import Releases
from mesh_agent.store.seq import write_atomic

log = logging.getLogger("mesh_agent.release")

PENDING_FILE = "confirm-pending.json"
STATE_FILE = "confirm-state.json"
RUNNER_LINK = "confirm-runner"
SETTINGS_FILE = Path("/etc/mesh-agent/release-confirm.json")
CONFIRM_UNIT = "mesh-release-confirm.service"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
PERSIST_EVERY_S = 5.0  # how often the elapsed time is written while waiting
# One observation (readyz and every reach target, tried at once) takes at most this
# long, and never longer than what is left of the window (but at least MIN_OBSERVE_S):
# an isolated node's checks time out, and their timeouts must not stretch the window.
OBSERVE_TIMEOUT_S = 2.0
MIN_OBSERVE_S = 0.2


@dataclass(frozen=True)
class Settings:
    """How a switch is confirmed on this node (``/etc/mesh-agent/release-confirm.json``,
    written by the ``mesh_agent`` role)."""

    window_s: float = DEFAULT_WINDOW_S
    expect_neighbors: int = 1
    reach: tuple[str, ...] = ()
    hold_s: float = DEFAULT_HOLD_S

    def problem(self) -> str | None:
        """Why a switch cannot be armed with these settings (checked before switching)."""
        if not 0 < self.window_s <= MAX_WINDOW_S:
            return (f"the confirm window must be > 0 and <= {MAX_WINDOW_S:.0f} s, "
                    f"got {self.window_s}")
        if not 0 <= self.hold_s < self.window_s:
            return f"hold_s must be >= 0 and shorter than the window, got {self.hold_s}"
        if self.expect_neighbors < 0:
            return "expect_neighbors must be >= 0"
        return None

    @classmethod
    def load(cls, path: Path = SETTINGS_FILE) -> Settings:
        if not path.exists():
            return cls()
        doc = json.loads(path.read_text())
        return cls(window_s=float(doc.get("window_s", DEFAULT_WINDOW_S)),
                   expect_neighbors=int(doc.get("expect_neighbors", 1)),
                   reach=tuple(str(r) for r in doc.get("reach", ())),
                   hold_s=float(doc.get("hold_s", DEFAULT_HOLD_S)))


@dataclass(frozen=True)
class Clock:
    """The three clocks the core needs; tests pass their own."""

    wall: Callable[[], float] = time.time
    boottime: Callable[[], float] = lambda: time.clock_gettime(time.CLOCK_BOOTTIME)
    boot_id: Callable[[], str] = lambda: BOOT_ID.read_text().strip()


class ConfirmFiles:
    """The commit-confirm files under an install root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.pending = self.root / PENDING_FILE
        self.state = self.root / STATE_FILE
        self.runner = self.root / RUNNER_LINK

    def load_pending(self) -> Pending | None:
        try:
            return Pending.from_json(self.pending.read_bytes())
        except FileNotFoundError:
            return None

    def save_pending(self, p: Pending) -> None:
        write_atomic(self.pending, p.to_json())

    def state_doc(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.state.read_text())
            return doc if isinstance(doc, dict) else {}
        except (FileNotFoundError, ValueError):
            return {}

    def confirmed(self) -> list[str]:
        return [str(r) for r in self.state_doc().get("confirmed", [])]

    def finish(self, p: Pending, outcome: str, detail: dict[str, Any], wall: float) -> bool:
        """End the pending switch with *outcome*; False when another process ended it first."""
        claim = self.root / f".{PENDING_FILE}.{os.getpid()}.claim"
        try:
            os.rename(self.pending, claim)
        except FileNotFoundError:
            return False
        doc = self.state_doc()
        confirmed = [r for r in doc.get("confirmed", []) if r != p.release]
        if outcome == "confirmed":
            confirmed.append(p.release)
        doc["confirmed"] = confirmed[-16:]
        doc["last"] = {"outcome": outcome, "release": p.release, "previous": p.previous,
                       "switched_at": p.switched_at, "ended_at": wall,
                       "window_s": p.window_s, **detail}
        write_atomic(self.state, json.dumps(doc, sort_keys=True, indent=1).encode())
        claim.unlink()
        return True

    def status(self) -> dict[str, Any]:
        p = self.load_pending()
        return {"pending": None if p is None else json.loads(p.to_json()),
                "confirmed": self.confirmed(), "last": self.state_doc().get("last")}


def has_watcher(venv: Path) -> bool:
    """Whether a release's venv carries this watcher (releases before it do not)."""
    return any(venv.glob("lib/python3*/site-packages/mesh_agent/release/watch.py"))


def arm(releases: Releases, previous: str | None, new: str, settings: Settings,
        clock: Clock, start_watcher: Callable[[], None]) -> Pending | None:
    """After a switch from *previous* to *new*: write the pending record, point
    ``confirm-runner`` at the watcher to run, start it. Not armed (None) for the
    first release (nothing to revert to) or a switch back to a release this node
    confirmed before (a rollback to a known-good release must not revert itself)."""
    files = ConfirmFiles(releases.root)
    if previous is None or previous == new or new in files.confirmed():
        old = files.load_pending()
        if old is not None:  # a hand switch ends whatever was pending
            files.finish(old, "superseded", {"current": new}, clock.wall())
        return None
    p = Pending(release=new, previous=previous, switched_at=clock.wall(),
                boot_id=clock.boot_id(), switched_boottime=clock.boottime(),
                window_s=settings.window_s, expect_neighbors=settings.expect_neighbors,
                reach=settings.reach, hold_s=settings.hold_s)
    files.save_pending(p)
    prev_venv = releases.dir / previous / "venv"
    runner = prev_venv if has_watcher(prev_venv) else releases.dir / new / "venv"
    tmp = releases.root / f".{RUNNER_LINK}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(runner, releases.root), tmp)
    os.replace(tmp, files.runner)
    start_watcher()
    log.info("release %s armed: confirm within %.0f s or revert to %s", new, p.window_s,
             previous)
    return p


def systemd_start_watcher() -> None:
    subprocess.run(["systemctl", "restart", "--no-block", CONFIRM_UNIT], check=True)


def reach_target(target: str, timeout: float = OBSERVE_TIMEOUT_S) -> bool:
    """``HOST:PORT``: a TCP connection opens; ``HOST``: one ICMP echo is answered."""
    host, sep, port = target.rpartition(":")
    if sep and port.isdigit() and not host.endswith(":"):
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return True
        except OSError:
            return False
    try:
        return subprocess.run(["ping", "-c", "1", "-W", str(max(1, math.ceil(timeout))), target],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout + 1).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _readyz(api: HttpClient) -> tuple[bool, int]:
    try:
        status, body = api.get("/readyz", ok=(200, 503))
        return (status == 200 and bool(body.get("ready")),
                int(body.get("detail", {}).get("neighbors_up", 0)))
    except (AgentUnreachable, ApiError, AttributeError, TypeError, ValueError):
        return False, 0


def observe(releases: Releases, p: Pending, api: HttpClient,
            reach: Callable[[str], bool] = reach_target,
            budget_s: float = OBSERVE_TIMEOUT_S) -> Observation:
    """Ask the local agent's ``/readyz`` (ready, neighbours up) and try the targets, all
    at once; whatever has not answered within *budget_s* counts as failed (its thread is
    left to end on its own timeout). One target answering is enough."""
    pool = ThreadPoolExecutor(max_workers=1 + len(p.reach), thread_name_prefix="confirm-check")
    try:
        ready_f = pool.submit(_readyz, api)
        reach_fs: list[Future[bool]] = [pool.submit(reach, t) for t in p.reach]
        deadline = time.monotonic() + budget_s
        pending_fs: set[Future[Any]] = {ready_f, *reach_fs}
        while pending_fs:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            _done, pending_fs = wait_futures(pending_fs, timeout=left,
                                             return_when=FIRST_COMPLETED)
            if ready_f.done() and any(f.done() and f.result() for f in reach_fs):
                break  # one target is enough
    finally:
        pool.shutdown(wait=False, cancel_futures=True)

    def result(f: Future[Any], default: Any) -> Any:
        return f.result() if f.done() and not f.cancelled() and f.exception() is None \
            else default

    ready, up = result(ready_f, (False, 0))
    reach_ok = None if not p.reach else any(result(f, False) for f in reach_fs)
    return Observation(ready=ready, neighbors_up=up, reach_ok=reach_ok,
                       current=releases.current_id())


def watch(releases: Releases, observe_fn: Callable[[Pending, float], Observation],
          restart: Callable[[], None], clock: Clock, sleep: Callable[[float], None] = time.sleep,
          interval_s: float = 1.0) -> Decision | None:
    """Run until the pending switch ends; the final decision (None: nothing was pending
    or it was ended by someone else, e.g. ``meshctl release confirm``).

    *observe_fn(p, budget_s)* must return within *budget_s*: the time left of the
    window (between :data:`MIN_OBSERVE_S` and :data:`OBSERVE_TIMEOUT_S`), and the last
    sleep ends at the window's end, so a revert is decided at most about
    :data:`MIN_OBSERVE_S` after it, however slowly the checks fail."""
    files = ConfirmFiles(releases.root)
    try:
        p = files.load_pending()
    except ConfirmFormatError:
        # Nothing to act on: move it aside (the unit's condition then stops the restarts)
        # and say so; the operator decides with meshctl release list/use.
        os.replace(files.pending, files.root / f"{PENDING_FILE}.bad")
        log.error("%s is unreadable; moved to %s.bad, nothing reverted", files.pending,
                  PENDING_FILE)
        raise
    if p is None:
        return None
    p = rebase(p, clock.boot_id(), clock.boottime(), clock.wall())
    files.save_pending(p)
    last_saved = clock.boottime()
    while True:
        left = p.window_s - elapsed(p, clock.boottime())
        obs = observe_fn(p, max(MIN_OBSERVE_S, min(OBSERVE_TIMEOUT_S, left)))
        now = clock.boottime()
        p, decision = step(p, obs, now)
        if not isinstance(decision, Wait):
            break
        if now - last_saved >= PERSIST_EVERY_S:
            if files.load_pending() is None:
                return None  # confirmed by hand meanwhile
            p = replace(p, elapsed_s=max(p.elapsed_s, now - p.switched_boottime))
            files.save_pending(p)
            last_saved = now
        elif not files.pending.exists():
            return None
        sleep(max(0.0, min(interval_s, decision.remaining_s)))
    detail = as_dict(decision)
    if isinstance(decision, Revert):
        # Switch first, record after: a kill -9 in between leaves the pending record,
        # and the next run finds current == previous and records the revert then.
        if files.load_pending() is None:
            return None  # confirmed by hand at the last moment
        log.warning("release %s: %s; reverting to %s", p.release, decision.reason, decision.to)
        releases.use(decision.to, restart, allow_wire_change=True)
        files.finish(p, "reverted", detail, clock.wall())
    elif isinstance(decision, Confirm):
        if files.finish(p, "confirmed", detail, clock.wall()):
            log.info("release %s confirmed: %s", p.release, decision.reason)
    elif isinstance(decision, GiveUp):
        if files.finish(p, "unconfirmed", detail, clock.wall()):
            log.error("release %s: %s", p.release, decision.reason)
    elif isinstance(decision, Superseded):
        outcome = "reverted" if decision.current == p.previous else "superseded"
        files.finish(p, outcome, detail, clock.wall())
    return decision


def confirm_by_hand(root: Path, wall: float) -> Pending | None:
    """``meshctl release confirm``: end the pending switch as confirmed."""
    files = ConfirmFiles(root)
    p = files.load_pending()
    if p is None or not files.finish(p, "confirmed", {"decision": "confirm",
                                                      "reason": "confirmed by hand"}, wall):
        return None
    return p

