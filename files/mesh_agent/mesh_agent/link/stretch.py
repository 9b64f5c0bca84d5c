"""Hello stretching: announce a longer hello interval while our own timers run late.

When our hello timer fires late the host is starved, and our peers' timers
are probably late too: announcing a longer interval (peers wait longer
before declaring us dead) beats feeding a flap storm that starves the host
further. Only a lag our peers could mistake for our death counts: a hello
late by L arrives (1 interval + L) after the previous one, and peers give up
after (dead_multiplier x interval), so a lag up to (dead_multiplier - 1)
intervals is harmless and ignored. Never counted: the first
:data:`STARTUP_GRACE_S` (our own imports) and ordinary jitter (the first
version stretched detection by a third on a quiet host; a later one,
counting lags over one interval, stretched it on every CPU burst of a
50-agent lab, when all agents recompute at once after a cut).

Announced = configured + 2 x the recent worst lag, at most
:data:`HELLO_STRETCH_MAX` x configured; the lag decays with a
:data:`LAG_HALF_LIFE_S` half-life, so detection is fast again once the host
is quiet (a starved host keeps being late and keeps the stretch up; with a
10 s half-life, one CPU burst after a cut in the 50-agent bench still slowed
detection of the next cut, 6 s later, to 0.8 s).

Sans-I/O: :meth:`HelloStretch.timer_fired` takes how late the timer fired and
the time, and returns the interval to announce. :meth:`HelloStretch.set_floor`
is the self-healing loop's input (:mod:`mesh_agent.mapek`, ``lengthen_hello``):
a lower bound on the announced interval, held until it is set back to 0.
"""

from __future__ import annotations

from dataclasses import dataclass

HELLO_STRETCH_MAX = 10.0
LAG_HALF_LIFE_S = 1.0
STARTUP_GRACE_S = 5.0


@dataclass(frozen=True)
class Stretch:
    announced_s: float  # the hello interval our hellos should announce now
    started: bool  # this lag just stretched it past twice the configured interval


class HelloStretch:
    def __init__(self, interval_s: float, dead_multiplier: int, started_at: float) -> None:
        self.interval_s = interval_s
        self.harmless_s = (dead_multiplier - 1) * interval_s
        self.started_at = started_at
        self.announced_s = interval_s
        self._lag = 0.0
        self._lag_at = started_at
        self.floor_s = 0.0

    @property
    def lag_s(self) -> float:
        """The recent worst harmful lag (as of the last tick; 0 when none was harmful)."""
        return self._lag

    def set_floor(self, seconds: float) -> None:
        """Announce at least ``seconds`` (capped at the stretch maximum); 0 removes the floor.

        Takes effect at the next tick (the hello timer's ``timer_fired``).
        """
        self.floor_s = min(max(0.0, seconds), HELLO_STRETCH_MAX * self.interval_s)

    def timer_fired(self, late: float, now: float) -> Stretch:
        """The hello timer fired ``late`` seconds after it was due, at ``now``."""
        if late <= self.harmless_s or now - self.started_at < STARTUP_GRACE_S:
            late = 0.0
        decayed = self._lag * 0.5 ** ((now - self._lag_at) / LAG_HALF_LIFE_S)
        self._lag, self._lag_at = max(late, decayed), now
        base = self.interval_s
        announced = max(self.floor_s, min(HELLO_STRETCH_MAX * base, base + 2 * self._lag))
        started = announced > 2 * base >= self.announced_s
        self.announced_s = announced
        return Stretch(announced, started)
