"""When a fault must go: the reaper's decision, with no I/O (journal entries and time in).

A fault is removed when its deadline has passed, or when it was journalled in
another boot (the node restarted: the kernel state is gone, but a link alias,
a cgroup or a helper started at boot may not be, and the record must go). An
entry still ``injecting`` long after its creation belongs to an injector that
died half-way; its deadline covers it like any other.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshcore_chaos.node.journal import Entry

# Longest a fault may be scheduled for: a bound on the blast radius in time.
MAX_DURATION_S = 3600.0


@dataclass(frozen=True)
class Due:
    id: str
    reason: str  # deadline | reboot


def due(entries: Iterable[Entry], now: float, boot: str) -> list[Due]:
    """The entries to remove now, oldest deadline first."""
    out = []
    for e in sorted(entries, key=lambda e: (e.deadline, e.id)):
        if e.boot != boot:
            out.append(Due(e.id, "reboot"))
        elif e.deadline <= now:
            out.append(Due(e.id, "deadline"))
    return out


def next_wakeup(entries: Iterable[Entry], now: float, interval: float) -> float:
    """Seconds the loop may sleep: until the next deadline, at most ``interval``."""
    pending = [e.deadline - now for e in entries]
    return max(0.0, min([interval, *pending]))


def check_deadline(deadline: float, now: float) -> str | None:
    """Why a deadline is refused (None: accepted)."""
    if deadline <= now:
        return f"deadline {deadline:.3f} is not in the future (now {now:.3f})"
    if deadline - now > MAX_DURATION_S:
        return f"deadline {deadline - now:.0f} s away: longer than {MAX_DURATION_S:.0f} s"
    return None
