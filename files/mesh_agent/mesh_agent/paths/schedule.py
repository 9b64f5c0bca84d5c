"""When to recompute paths: SPF back-off, and whether the last computation is current.

SPF back-off is a simplified RFC 8405: the first change after a quiet
:data:`SPF_QUIET_S` is computed at once (remote nodes must reconverge fast
when a backup is not loop-free), but a storm of changes (a flapping radio, a
CPU-starved host) is batched with a hold that doubles per computation, from
:data:`SPF_HOLD_MIN_S` up to :data:`SPF_HOLD_MAX_S`.

Every change bumps a generation; a computation takes the generation it
started from and, when it finishes, the paths are current if no change came
in meanwhile. Sans-I/O: the caller passes the time and runs the computation.

Readiness asks :attr:`current`, which is false from a change until the
computation covering it finishes: on a mesh whose changes never stop (link
costs flapping under load) it can be false at most instants while routes are
programmed. :meth:`pending_s` says how long the oldest uncovered change has
waited, so a not-ready answer tells a flicker (well under a second) from
paths that are stuck.
"""

from __future__ import annotations

SPF_QUIET_S = 1.0
SPF_HOLD_MIN_S = 0.05
SPF_HOLD_MAX_S = 1.0


class ComputeSchedule:
    def __init__(self) -> None:
        self.generation = 0
        self.computed = -1
        self.computations_total = 0
        self._last = -float("inf")
        self._hold = 0.0
        self._since: float | None = None  # oldest change no finished computation covers
        self._since_start: float | None = None  # first change after the running start()

    def changed(self, now: float) -> None:
        """Something the paths depend on changed at *now*: a computation is due."""
        self.generation += 1
        if self._since is None:
            self._since = now
        if self._since_start is None:
            self._since_start = now

    @property
    def current(self) -> bool:
        """The last finished computation saw every change so far."""
        return self.computed == self.generation

    def delay(self, now: float) -> float:
        """How long to wait before computing (0 unless changes keep coming)."""
        if now - self._last >= SPF_QUIET_S:
            self._hold = 0.0
        else:
            self._hold = min(SPF_HOLD_MAX_S, max(SPF_HOLD_MIN_S, 2 * self._hold))
        self._last = now + self._hold
        return self._hold

    def pending_s(self, now: float) -> float:
        """How long the oldest change not covered by a finished computation has waited (0: none)."""
        return 0.0 if self._since is None else max(0.0, now - self._since)

    def start(self) -> int:
        """The generation this computation covers."""
        self._since_start = None
        return self.generation

    def finished(self, generation: int) -> None:
        self.computed = generation
        self.computations_total += 1
        # Changes that came in while computing are still pending, since the first of them.
        self._since = None if self.current else self._since_start
