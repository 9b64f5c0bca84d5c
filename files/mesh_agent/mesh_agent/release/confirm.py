"""Node-local commit-confirm after a release switch (sans-I/O core).

After ``meshctl release use`` switches ``current``, the node holds a *pending*
switch: {release, previous release, switched_at, window T}. Until the agent is
ready, sees at least the expected number of neighbours and reaches one of the
configured controller/gateway targets, the switch is unconfirmed; when T passes
unconfirmed the node reverts to the previous release by itself. No controller
contact is needed, which is the point: a node that lost the mesh cannot be
reached by Ansible to be rolled back (Junos ``commit confirmed`` and LibreMesh's
mesh-upgrade wait 600 s; T here is at most :data:`MAX_WINDOW_S`).

This module takes observations and time and returns a decision; it reads no
file, socket or clock. :mod:`mesh_agent.ctl.confirm` is the shell: it persists
:class:`Pending` atomically under the install root (so a ``kill -9`` or a reboot
resumes the same window), asks the agent's API, and performs the revert
(:meth:`mesh_agent.release.store.Releases.use` back to ``previous``).

Time. Within one boot the elapsed time is measured on CLOCK_BOOTTIME (immune to
wall-clock steps, counts suspend). After a reboot the boot-time clock restarted,
so :func:`rebase` carries the window over: the elapsed time is the wall-clock
time since the switch when the wall clock moved forward, else the last elapsed
time the shell persisted (a Pi without an RTC may boot with an older clock);
never less than what was already persisted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

MAX_WINDOW_S = 120.0
# The default leaves the revert (decided within MIN_OBSERVE_S of the window's end, then
# the switch and the agent's restart) inside the 120 s a node may stay on a release
# nobody confirmed; the lab measured 123.5 s with a 120 s window before the checks
# were bounded by the time left (docs/release.md).
DEFAULT_WINDOW_S = 110.0
DEFAULT_HOLD_S = 5.0


class ConfirmFormatError(ValueError):
    """A pending-switch record that is not one (the shell refuses to act on it)."""


@dataclass(frozen=True)
class Pending:
    """A release switch waiting for confirmation."""

    release: str
    previous: str | None
    switched_at: float  # wall clock (seconds since the epoch) at the switch
    boot_id: str  # the boot the boot-time figures below belong to
    switched_boottime: float  # CLOCK_BOOTTIME at the switch (rebased after a reboot)
    window_s: float = DEFAULT_WINDOW_S
    expect_neighbors: int = 1
    reach: tuple[str, ...] = ()  # controller or gateway targets; one answering is enough
    hold_s: float = DEFAULT_HOLD_S  # the checks must hold this long without a break
    elapsed_s: float = 0.0  # last elapsed time persisted by the shell
    healthy_since: float | None = None  # boot-time since when every check holds

    def __post_init__(self) -> None:
        def number(v: object) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and v == v

        if not (isinstance(self.release, str) and isinstance(self.boot_id, str)
                and (self.previous is None or isinstance(self.previous, str))
                and all(number(v) for v in (self.switched_at, self.switched_boottime,
                                            self.window_s, self.hold_s, self.elapsed_s))
                and (self.healthy_since is None or number(self.healthy_since))
                and isinstance(self.expect_neighbors, int)
                and all(isinstance(r, str) for r in self.reach)):
            raise ConfirmFormatError("a pending-switch field has the wrong type")
        if not 0 < self.window_s <= MAX_WINDOW_S:
            raise ConfirmFormatError(
                f"confirm window {self.window_s} s: must be > 0 and <= {MAX_WINDOW_S:.0f} s")
        if self.expect_neighbors < 0:
            raise ConfirmFormatError("expect_neighbors must be >= 0")
        if not 0 <= self.hold_s < self.window_s:
            raise ConfirmFormatError("hold_s must be >= 0 and shorter than the window")

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["reach"] = list(self.reach)
        return json.dumps(doc, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Pending:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise TypeError("not an object")
            doc["reach"] = tuple(str(r) for r in doc.get("reach", ()))
            # The watcher may be the previous release's code reading a newer release's
            # record: keys it does not know are ignored, not fatal to the revert.
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in doc.items() if k in known})
        except ConfirmFormatError:
            raise
        except (ValueError, TypeError, RecursionError) as exc:
            raise ConfirmFormatError(f"bad pending-switch record: {exc}") from exc


@dataclass(frozen=True)
class Observation:
    """What the shell saw at one moment. ``reach_ok`` is None when no target is set."""

    ready: bool
    neighbors_up: int
    reach_ok: bool | None
    current: str | None  # the release ``current`` points at now

    def failing(self, p: Pending) -> list[str]:
        out = []
        if not self.ready:
            out.append("agent not ready")
        if self.neighbors_up < p.expect_neighbors:
            out.append(f"{self.neighbors_up} neighbours up, {p.expect_neighbors} expected")
        if self.reach_ok is False:
            out.append("no controller or gateway answers (" + ", ".join(p.reach) + ")")
        return out


@dataclass(frozen=True)
class Confirm:
    reason: str


@dataclass(frozen=True)
class Wait:
    failing: tuple[str, ...]
    remaining_s: float


@dataclass(frozen=True)
class Revert:
    """Switch ``current`` back to ``to`` and restart the agent."""

    to: str
    reason: str


@dataclass(frozen=True)
class GiveUp:
    """The window passed and there is nothing to revert to (the first release)."""

    reason: str


@dataclass(frozen=True)
class Superseded:
    """``current`` no longer names the pending release: someone switched by hand."""

    current: str | None


Decision = Confirm | Wait | Revert | GiveUp | Superseded


def elapsed(p: Pending, boottime: float) -> float:
    """Seconds of the window used, at boot-time *boottime* of the same boot as *p*."""
    return max(p.elapsed_s, boottime - p.switched_boottime)


def rebase(p: Pending, boot_id: str, boottime: float, wall: float) -> Pending:
    """*p* expressed on this boot's clock (unchanged within the same boot)."""
    if boot_id == p.boot_id:
        return p
    used = p.elapsed_s
    if wall >= p.switched_at:
        used = max(used, wall - p.switched_at)
    return replace(p, boot_id=boot_id, switched_boottime=boottime - used, elapsed_s=used,
                   healthy_since=None)


def step(p: Pending, obs: Observation, boottime: float) -> tuple[Pending, Decision]:
    """One observation at *boottime* (same boot as *p*): the updated record and the decision.

    Confirm when every check has held for ``hold_s`` (a ready flicker does not
    confirm a release that is crash-looping); revert once the window is used up,
    checked before confirming, so nothing confirms late."""
    if obs.current != p.release:
        return p, Superseded(obs.current)
    used = elapsed(p, boottime)
    failing = obs.failing(p)
    healthy_since = None if failing else (
        p.healthy_since if p.healthy_since is not None else boottime)
    p = replace(p, healthy_since=healthy_since)
    if used >= p.window_s:
        why = ("; ".join(failing) if failing else
               f"checks held only {boottime - healthy_since:.1f} s of {p.hold_s:.1f} s"
               if healthy_since is not None else "unconfirmed")
        reason = f"not confirmed within {p.window_s:.0f} s: {why}"
        if p.previous is None:
            return p, GiveUp(reason + "; no previous release to revert to")
        return p, Revert(p.previous, reason)
    if healthy_since is not None and boottime - healthy_since >= p.hold_s:
        what = ["agent ready", f"{obs.neighbors_up} neighbours up"]
        if obs.reach_ok:
            what.append("controller/gateway reached")
        return p, Confirm(", ".join(what) + f" after {used:.1f} s")
    return p, Wait(tuple(failing) or (f"holding {p.hold_s:.0f} s",), p.window_s - used)


def as_dict(d: Decision) -> dict[str, Any]:
    return {"decision": type(d).__name__.lower(), **asdict(d)}
