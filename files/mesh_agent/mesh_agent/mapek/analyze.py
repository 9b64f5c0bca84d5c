"""Analyze: threshold crossings become incidents with a class and a suspected target.

A :class:`Detector` (the plug-in point: :class:`ThresholdDetector` now, the
anomaly detector and root-cause analysis of a later issue behind the same
protocol) turns the Monitor's readings into :class:`Finding` s, each saying
whether a (signal, target) is *active*. :class:`Analyzer` opens an
:class:`Incident` when a finding becomes active and marks it recovered when
the finding clears; at most one incident is open per (class, target).

The threshold detector debounces both ways: a reading must cross
``confirm`` samples in a row to raise, and be clear ``clear`` samples in a
row to recover. A single lost burst does not open an incident, and a signal
hovering at its threshold does not open and close one per sample. An
incident is *detected* when the detector raises it (the loop can only act
from then on) and *recovered* at the first of the clear samples that
closed it (when the signal went back, known ``clear`` samples later): MTTR
is the time between the two. An incident whose target stopped being read
(a neighbour gone) ends as ``gone``, with no MTTR.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

from mesh_agent.mapek.monitor import Reading, Signal, Target


class IncidentClass(StrEnum):
    LOSSY_LINK = "lossy_link"
    SLOW_LINK = "slow_link"
    STARVED = "starved_node"
    FAILOVER_STORM = "failover_storm"
    ADVERT_STORM = "advert_storm"
    ROUTE_CHURN = "route_churn"
    FLAPPING_LINK = "flapping_link"
    STALE_IDENTITY = "stale_identity"  # our certificate was not rotated in time


CLASS_OF: dict[Signal, IncidentClass] = {
    Signal.LOSS: IncidentClass.LOSSY_LINK,
    Signal.RTT: IncidentClass.SLOW_LINK,
    Signal.LATENESS: IncidentClass.STARVED,
    Signal.CPU: IncidentClass.STARVED,
    Signal.FAILOVERS: IncidentClass.FAILOVER_STORM,
    Signal.REJECTED: IncidentClass.ADVERT_STORM,
    Signal.CHURN: IncidentClass.ROUTE_CHURN,
    Signal.DOWNS: IncidentClass.FLAPPING_LINK,
    Signal.IDENTITY: IncidentClass.STALE_IDENTITY,
}


@dataclass(frozen=True)
class Finding:
    signal: Signal
    target: Target
    active: bool
    value: float
    threshold: float
    since: float = 0.0  # when the current run (crossing, or clear) began
    gone: bool = False  # cleared because the target stopped being read (a neighbour gone)

    @property
    def cls(self) -> IncidentClass:
        return CLASS_OF[self.signal]


class Detector(Protocol):
    """Turns readings into findings; keeps whatever state it needs between samples."""

    def detect(self, readings: Sequence[Reading], now: float) -> list[Finding]: ...


class ThresholdDetector:
    """Active after ``confirm`` crossings in a row, inactive after ``clear`` clear ones.

    A (signal, target) that stops being read (a neighbour gone) counts as clear.
    """

    def __init__(self, confirm: int = 2, clear: int = 3) -> None:
        if confirm < 1 or clear < 1:
            raise ValueError("confirm and clear must be at least 1")
        self.confirm, self.clear = confirm, clear
        self._run: dict[tuple[Signal, Target], int] = {}  # >0 crossing run, <0 clear run
        self._since: dict[tuple[Signal, Target], float] = {}  # when that run began
        self._active: dict[tuple[Signal, Target], Finding] = {}

    def detect(self, readings: Sequence[Reading], now: float) -> list[Finding]:
        seen: set[tuple[Signal, Target]] = set()
        out: list[Finding] = []
        for r in readings:
            key = (r.signal, r.target)
            seen.add(key)
            before = self._run.get(key, 0)
            run = max(before, 0) + 1 if r.crossed else min(before, 0) - 1
            self._run[key] = run
            if (run > 0) != (before > 0) or before == 0:
                self._since[key] = now
            was = key in self._active
            active = run >= self.confirm or (was and -run < self.clear)
            f = Finding(r.signal, r.target, active, r.value, r.threshold, self._since[key])
            if active:
                if not was or r.crossed:  # keep the worst-case context fresh while crossing
                    self._active[key] = f
            else:
                self._active.pop(key, None)
                if run <= -self.clear:
                    self._run.pop(key, None)  # bounded: clear keys are forgotten
                    self._since.pop(key, None)
            if active or was:
                out.append(f)
        for key in [k for k in self._active if k not in seen]:
            before = self._run.get(key, 0)
            if before > 0:
                self._since[key] = now
            run = min(before, 0) - 1
            self._run[key] = run
            last = self._active[key]
            if -run >= self.clear:
                del self._active[key]
                del self._run[key]
                out.append(replace(last, active=False, since=self._since.pop(key, now),
                                   gone=True))
            else:
                out.append(last)
        return out


@dataclass
class Incident:
    id: int
    cls: IncidentClass
    target: Target
    signal: Signal
    value: float
    threshold: float
    detected_at: float
    decided_at: float | None = None
    recovered_at: float | None = None
    action: str | None = None
    action_outcome: str | None = None  # applied | observed | refused:<why> | failed
    # How it ended: recovered (its signal went back) or gone (its target stopped being
    # read: a neighbour that went away is not a recovery, and teaches nothing).
    resolution: str | None = None
    # The incident this one is a symptom of (a failover storm of a flapping link's: the
    # loop's attribution rule, mapek.loop), or None.
    cause: int | None = None
    # A link incident: our routes that forwarded over the link when it was detected
    # (None: not a link incident, or not known), and when none did any more, if they did
    # (the traffic left the bad link: mitigated, while the link itself may still be bad).
    carried: int | None = None
    mitigated_at: float | None = None

    @property
    def ttm_s(self) -> float | None:
        """Time to mitigate: detected -> our traffic off the link (a link incident that
        carried some)."""
        if self.mitigated_at is None:
            return None
        return self.mitigated_at - self.detected_at

    @property
    def mttr_s(self) -> float | None:
        if self.recovered_at is None or self.resolution == "gone":
            return None
        return self.recovered_at - self.detected_at

    @property
    def key(self) -> tuple[IncidentClass, Target]:
        return self.cls, self.target


@dataclass
class Analysis:
    opened: list[Incident] = field(default_factory=list)
    recovered: list[Incident] = field(default_factory=list)


class Analyzer:
    """Open incidents from findings; one open incident per (class, target)."""

    def __init__(self, detector: Detector | None = None, next_id: int = 1) -> None:
        self.detector: Detector = detector or ThresholdDetector()
        self.next_id = next_id
        self.open: dict[tuple[IncidentClass, Target], Incident] = {}
        # Which (signal, target) pairs keep each open incident alive (CPU and lateness
        # both make a starved node: it recovers when neither is active).
        self._causes: dict[tuple[IncidentClass, Target], set[Signal]] = {}
        self.opened_total: dict[str, int] = {}

    def analyze(self, readings: Sequence[Reading], now: float) -> Analysis:
        return self.findings(self.detector.detect(readings, now), now)

    def findings(self, findings: Iterable[Finding], now: float) -> Analysis:
        out = Analysis()
        cleared_at: dict[tuple[IncidentClass, Target], float] = {}
        gone: set[tuple[IncidentClass, Target]] = set()
        for f in findings:
            key = (f.cls, f.target)
            causes = self._causes.setdefault(key, set())
            if f.active:
                causes.add(f.signal)
                if key not in self.open:
                    inc = Incident(self.next_id, f.cls, f.target, f.signal, f.value, f.threshold,
                                   now)
                    self.next_id += 1
                    self.open[key] = inc
                    self.opened_total[f.cls] = self.opened_total.get(f.cls, 0) + 1
                    out.opened.append(inc)
            else:
                causes.discard(f.signal)
                cleared_at[key] = max(cleared_at.get(key, f.since), f.since)
                if f.gone:
                    gone.add(key)
            if not causes:
                del self._causes[key]
                if key in self.open:
                    done = self.open.pop(key)
                    # Recovered when the signal went clear, not when the detector
                    # was sure of it (``clear`` samples later); never before detection.
                    done.recovered_at = max(done.detected_at, cleared_at.get(key, now))
                    done.resolution = "gone" if key in gone else "recovered"
                    out.recovered.append(done)
        return out
