"""A maintenance window: the self-healing loop records incidents but does not act on them.

A rollout restarts agents one round at a time, and each restart is, for its neighbours, a
link that went down, a failover, a re-flood: what the loop is there to remedy. On the
50-node lab a rollout's restart rounds opened 28 incidents on 15 nodes (docs/mapek.md,
"The loop on the 50-node lab"), each one a quarantine or a longer hello chosen for a
restart, and each one taught the policy from a fault that was not one.

So whoever changes the fleet on purpose opens a window first (``meshctl maintenance start
--for 30m --reason rollout``; ``site.yml`` and ``rollout.yml`` do it on every node they
touch, and close it at the end). While it is open (:class:`mesh_agent.mapek.loop.MapeK`):

- incidents are still detected and recorded, with the action ``none`` and the outcome
  ``maintenance``, so nothing is hidden;
- nothing is done about them, and they teach nothing: no statistics, no threshold change,
  no MTTR, no collateral charge against an earlier action;
- an incident opened in the window that is still open when the window ends is decided
  then, as if it had just opened: what the change really broke is remedied, late by the
  window, never ignored;
- actions already in force, leases held and refused decisions' retries go on as before.

The window is a file, ``<state_dir>/maintenance.json``, written by root (meshctl) and read
by the agent at every sample: like ``/etc/nologin`` or kured's sentinel, it needs no
write endpoint on an API that may listen on the mesh, and it survives the agent's own
restart in the middle of a rollout. It cannot outlive its purpose: it ends at its
``until``, and never later than :data:`MAX_S` after the file was written, whatever the
file says; a file that does not parse opens no window (and is reported), so a broken
file can never silence the loop.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mesh_agent.store.seq import write_atomic

FILE = "maintenance.json"
MAX_S = 4 * 3600.0  # a window lasts at most this long after its file was written
MAX_REASON = 200


class WindowError(ValueError):
    """The window's file (or a request for one) is not a valid window."""


@dataclass(frozen=True)
class Window:
    """A window in wall-clock seconds: open from ``since`` until ``until``."""

    since: float
    until: float
    reason: str

    def open_at(self, wall: float) -> bool:
        return self.since - 1.0 <= wall < self.until  # 1 s for a clock read just before

    def as_dict(self) -> dict[str, object]:
        return {"since": self.since, "until": self.until, "reason": self.reason}


def path(state_dir: Path) -> Path:
    return Path(state_dir) / FILE


def window(seconds: float, reason: str, now: float) -> Window:
    """A window of *seconds* from *now*; :class:`WindowError` unless 0 < seconds <= MAX_S
    and the reason is one line of at most MAX_REASON characters."""
    if not 0 < seconds <= MAX_S:
        raise WindowError(f"a maintenance window lasts more than 0 s and at most "
                          f"{MAX_S:.0f} s ({MAX_S / 3600:.0f} h), not {seconds:g} s")
    if len(reason) > MAX_REASON or "\n" in reason:
        raise WindowError(f"the reason is one line of at most {MAX_REASON} characters")
    return Window(now, now + seconds, reason)


def parse(text: str, written: float) -> Window:
    """The window in a file's *text*, the file written at *written* (its mtime): ``until``
    capped at MAX_S after that. :class:`WindowError` says what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise WindowError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WindowError("not a JSON object")
    since, until, reason = data.get("since"), data.get("until"), data.get("reason", "")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (since, until)):
        raise WindowError("since and until must be numbers (seconds since the epoch)")
    if not isinstance(reason, str):
        raise WindowError("reason must be a string")
    assert isinstance(since, (int, float)) and isinstance(until, (int, float))
    if until <= since:
        raise WindowError("until is not after since")
    return Window(float(since), min(float(until), written + MAX_S), reason[:MAX_REASON])


def read(state_dir: Path) -> Window | None:
    """The window in *state_dir* (None: no file). :class:`WindowError` for a file that
    does not parse or cannot be read."""
    p = path(state_dir)
    try:
        written = p.stat().st_mtime
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise WindowError(f"{p}: {exc}") from None
    try:
        return parse(text, written)
    except WindowError as exc:
        raise WindowError(f"{p}: {exc}") from None


def write(state_dir: Path, w: Window) -> Path:
    """Open *w*: the file replaced atomically, readable by the agent's user."""
    p = path(state_dir)
    write_atomic(p, json.dumps(w.as_dict(), sort_keys=True).encode() + b"\n")
    os.chmod(p, 0o644)
    return p


def clear(state_dir: Path) -> bool:
    """Close the window; False when none was open."""
    try:
        path(state_dir).unlink()
    except FileNotFoundError:
        return False
    return True
