"""Monitor: the node's own signals against per-signal thresholds (sans-I/O).

The shell asks :meth:`mesh_agent.view.AgentView.observation` for an
:class:`Observation` (plain data) on each tick of the loop's timer;
:meth:`Monitor.sample` turns it into one :class:`Reading` per signal and target,
each saying whether it crosses its threshold. Counters (failovers, rejected
adverts, topology changes, CPU seconds) become rates from the previous
observation; a counter that went backwards (a restart) counts as zero.

Thresholds live in :class:`Thresholds`: every signal has a default and
bounds, and Knowledge may move a threshold only inside its bounds
(:meth:`Thresholds.set` clamps), so a run of false alarms can make a signal
less sensitive but never deaf, and a run of long incidents more sensitive but
never hair-triggered.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class Signal(StrEnum):
    LOSS = "loss"  # hello loss ratio of a link (the neighbour's best interface)
    RTT = "rtt"  # smoothed hello RTT of a link, seconds
    LATENESS = "lateness"  # how late our own hello timer fires (decayed worst), seconds
    FAILOVERS = "failovers"  # local failovers per minute
    REJECTED = "rejected_adverts"  # adverts rejected per minute (per sending neighbour)
    CHURN = "route_churn"  # topology changes that triggered a recompute, per minute
    CPU = "cpu"  # the agent's CPU, fraction of one core
    DOWNS = "link_downs"  # times a link's session ended, per minute (a flapping link)
    IDENTITY = "identity_age"  # share of our certificate's validity that has passed


LINK_SIGNALS = (Signal.LOSS, Signal.RTT, Signal.DOWNS)


@dataclass(frozen=True)
class Bounds:
    default: float
    lo: float
    hi: float

    def clamp(self, value: float) -> float:
        return min(self.hi, max(self.lo, value))


# Defaults: a link losing one hello in five is lossy (the link cost already
# rises from 10 %); RTT 100 ms on a one-hop radio link is far off normal; a
# hello timer late by a quarter second is a starved host (the stretch starts
# at (dead_multiplier - 1) intervals); the rates are what a quiet 50-node lab
# never reaches (docs/mapek.md).
DEFAULT_BOUNDS: Mapping[Signal, Bounds] = {
    Signal.LOSS: Bounds(0.2, 0.05, 0.6),
    Signal.RTT: Bounds(0.1, 0.005, 2.0),
    Signal.LATENESS: Bounds(0.25, 0.05, 5.0),
    Signal.FAILOVERS: Bounds(6.0, 1.0, 120.0),
    Signal.REJECTED: Bounds(60.0, 5.0, 6000.0),
    Signal.CHURN: Bounds(30.0, 5.0, 600.0),
    Signal.CPU: Bounds(0.8, 0.2, 1.0),
    # Over the 30-35 s rate window: one down reads 2/min (a cut, a reboot: not flapping),
    # three 5.1-6/min, four 6.9-8/min. A clean radio link is down about once an hour, a
    # lossy one that lives about 20 times (the liveness's false deaths), and under load
    # those come two or three at once: at 3/min the learning bench held its 10 % background
    # links as flapping 17 times in an hour, reading 3.4-8.0/min, while its 40 % faults
    # read 6.9-16 (docs/mapek.md, session 41). More than three downs in the window flap.
    Signal.DOWNS: Bounds(6.0, 1.0, 60.0),
    # SPIRE rotates an X.509-SVID at half its life, lab_pki re-issues a certificate with
    # a third of its life left (10 of 30 days): one three quarters through its life was
    # not rotated when it should have been (a Workload API stream that stopped, a
    # site.yml that has not run), and adverts signed with it are refused once it ends.
    Signal.IDENTITY: Bounds(0.75, 0.55, 0.95),
}


class Thresholds:
    """Current threshold per signal, always within its :class:`Bounds`."""

    def __init__(self, bounds: Mapping[Signal, Bounds] = DEFAULT_BOUNDS,
                 values: Mapping[str, float] | None = None) -> None:
        self.bounds = dict(bounds)
        self.values: dict[Signal, float] = {s: b.default for s, b in self.bounds.items()}
        for name, value in (values or {}).items():
            if name in self.bounds:
                self.set(Signal(name), value)

    def __getitem__(self, signal: Signal) -> float:
        return self.values[signal]

    def set(self, signal: Signal, value: float) -> float:
        """Move a threshold (clamped to its bounds); returns the value it now has."""
        self.values[signal] = self.bounds[signal].clamp(value)
        return self.values[signal]

    def as_dict(self) -> dict[str, float]:
        return {str(s): v for s, v in self.values.items()}

    @property
    def defaults(self) -> dict[str, float]:
        """Each signal's default: what Knowledge records a tuned value was tuned from."""
        return {str(s): b.default for s, b in self.bounds.items()}

    @classmethod
    def restore(cls, stored: Mapping[str, tuple[float, float | None]],
                bounds: Mapping[Signal, Bounds] = DEFAULT_BOUNDS
                ) -> tuple[Thresholds, list[tuple[str, float, str]]]:
        """Thresholds from what Knowledge kept: per signal, its last tuned value and the
        default it was tuned from (*stored*). A value tuned from today's default is taken
        as it is. One tuned from another default (a release moved the default) keeps its
        tuning as a ratio: ``value * today / then``, clamped; one whose default was not
        recorded (Knowledge before schema 4) cannot be rescaled and starts again from
        today's default. Returns the thresholds and the changes to record, each with its
        reason (``rebased:<then>-><today>``, ``reset:default_unrecorded``)."""
        t = cls(bounds)
        changes: list[tuple[str, float, str]] = []
        for name, (value, then) in stored.items():
            if name not in t.bounds:
                continue
            signal = Signal(name)
            today = t.bounds[signal].default
            if then is not None and abs(then - today) <= 1e-9:
                t.set(signal, value)
            elif then is not None and then > 0:
                new = t.set(signal, value * today / then)
                changes.append((name, new, f"rebased:{then:g}->{today:g}"))
            elif abs(value - today) > 1e-9:
                changes.append((name, today, "reset:default_unrecorded"))
        return t, changes


@dataclass(frozen=True)
class Target:
    """What an incident is about: a link (to a neighbour), a node (an origin), or this node.

    No signal names a node yet: the advert-storm signal counts rejections over all
    origins (a per-origin count, bounded against forged names, comes with the
    rogue-origin isolation).
    """

    kind: str  # link | node | self
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


SELF = Target("self", "")


@dataclass(frozen=True)
class LinkSample:
    neighbor: str
    loss: float  # the link sensor's own ratio (its last LOSS_WINDOW hellos)
    rtt_s: float | None
    # (heard, expected) hellos of the neighbour on this interface, counted on across its
    # sessions by the link sensor (mesh_agent.link.sensor.COUNTS_KEEP_S), so they only
    # go back when the sensor forgot the link; None where the quality has another
    # source (batman-adv's TQ): then the loss is *loss*.
    hellos: tuple[int, int] | None = None
    ifname: str = ""
    # Up (two-way, routed), or heard but not up (held down after flaps, or not yet
    # two-way): its hellos still count towards its loss.
    up: bool = True


@dataclass(frozen=True)
class Observation:
    """One snapshot of the node, plain data (built from the AgentView by the shell)."""

    at: float  # monotonic seconds
    links: tuple[LinkSample, ...] = ()
    lateness_s: float = 0.0
    failovers_total: int = 0
    rejected_total: int = 0
    changes_total: int = 0
    # Per edge ("a~b"), how many of those changes added, removed or re-costed it
    # (TopologyCore.edge_changes): the churn one noisy link explains (Monitor).
    edge_changes: tuple[tuple[str, int], ...] = ()
    cpu_seconds: float = 0.0
    ready: bool = True  # the node's readiness (AgentView.readiness, the one place)
    # Per neighbour node, how many of its up sessions ended so far (the link sensor's
    # ``downs``), and those whose direct link is our only way to them (AgentView.sole_link).
    link_downs: tuple[tuple[str, int], ...] = ()
    sole_links: frozenset[str] = frozenset()
    # Per neighbour, how many of our installed routes (the neighbour's own included)
    # forward over it now (AgentView.routes_via); None when not known. A link incident's
    # traffic has left the link when its neighbour's count reaches 0 (MapeK: mitigated).
    routes_via: tuple[tuple[str, int], ...] | None = None
    # Per neighbour none of those routes uses now, when the last one moved off it (the
    # route programmer's clock time: RouteProgrammer.via_left). It times the mitigation
    # finer than the samples do; a neighbour missing here left at this sample, for all
    # the loop can tell.
    routes_left: tuple[tuple[str, float], ...] = ()
    # Per neighbour, how many of the refused adverts (``rejected_total``) it sent: read per
    # link (its suspect); the node reads all of them but those of neighbours that cross.
    rejected_from: tuple[tuple[str, int], ...] = ()
    # Per neighbour, the adverts dropped unread from it while isolated (isolate_origin):
    # not refusals, but what tells whether its storm goes on (Monitor.storming).
    isolated_from: tuple[tuple[str, int], ...] = ()
    # The isolated neighbours some node now reaches us only through (AgentView.isolated_cut).
    isolated_cut: frozenset[str] = frozenset()
    # How far through its validity our own certificate is (0 at notBefore, 1 at notAfter,
    # more once it has expired); None while the clock is not trusted (a Pi without an RTC
    # before its first time sync: the dates mean nothing then).
    identity_age: float | None = None
    # The end of a maintenance window open now (monotonic seconds; None: none is open):
    # incidents are recorded, not acted on (mesh_agent.mapek.maintenance).
    maintenance_until: float | None = None


@dataclass(frozen=True)
class Reading:
    signal: Signal
    target: Target
    value: float
    threshold: float

    @property
    def crossed(self) -> bool:
        return self.value > self.threshold


# The per-minute signals (failovers, rejected adverts, route churn) count the events of
# the last RATE_WINDOW_S, scaled to a minute, instead of those between two samples: at a
# 5 s interval two route changes in one sample read 24/min, so a 10 % lossy link's cost
# moving now and then crossed the churn threshold (bench_mapek_learning). The count is
# divided by the whole window even while the monitor is younger than it: a young
# monitor under-reads rather than over-reads.
RATE_WINDOW_S = 30.0
# Route churn is the graph's changes that no single noisy link explains. A link that
# flaps, or whose cost swings with its loss, changes the graph at every node of the mesh,
# and a node away from it sees its adverts, not its downs: the link's ends have it as
# their incident (lossy_link, flapping_link). So the changes of any one edge that changed
# at least this often over the rate window (three times in 30 s) are left out of the
# churn reading; what is left, and can cross, is churn spread over many links (docs/mapek.md,
# session 52). One down and up of a link, a neighbour's restart, reads 4/min per edge.
NOISY_EDGE_PER_MIN = 6.0


# Loss is judged over at least LOSS_MIN_HELLOS of the neighbour's hellos (counted from
# their sequence numbers since the previous samples), not over the link sensor's last 20
# (one second at the 50 ms default). Over 20 hellos a link with 10 % loss reads above the
# 20 % threshold in one sample in 23 (binomial tail 4.3e-2), so two samples in a row did now
# and then on the learning bench's background links (docs/mapek.md); over 100 it is 8.1e-4
# per sample, while a link losing 30 % still crosses in 98 % of samples (40 %: all). A link
# with fewer hellos than that has no loss reading yet (too little evidence).
LOSS_MIN_HELLOS = 100
# The link sensor counts a neighbour's hellos on across its sessions (a link losing 40 %
# of 50 ms hellos times out every second or so, and most of its sessions begin and end
# between two samples), so the window does too; a link gone from the samples keeps its
# window this long (then it is forgotten: bounded).
LOSS_KEEP_S = 120.0
# A link missing from a sample (its neighbour held down after a flap, or between two
# sessions) keeps its last loss reading this long: a link losing 40 % is up at only some
# of the samples, and read as clear while it was away the detector never saw two
# crossings in a row (docs/mapek.md). A neighbour gone for good ends its incidents as
# ``gone`` once this has passed.
LOSS_HOLD_S = 30.0


def _rate(now: int | float, before: int | float, seconds: float, per: float) -> float:
    if seconds <= 0 or now < before:  # the first sample, or a counter reset
        return 0.0
    return (now - before) / seconds * per


class Monitor:
    def __init__(self, thresholds: Thresholds | None = None,
                 rate_window_s: float = RATE_WINDOW_S,
                 loss_min_hellos: int = LOSS_MIN_HELLOS) -> None:
        if loss_min_hellos < 1:
            raise ValueError("loss_min_hellos must be at least 1")
        self.thresholds = thresholds or Thresholds()
        self._last: Observation | None = None
        self.samples_total = 0
        self.rate_window_s = rate_window_s
        self.loss_min_hellos = loss_min_hellos
        # Observations back to the newest one at or before the window's start (its base).
        self._window: deque[Observation] = deque()
        # Per (neighbour, interface), its (heard, expected) hello counts back to the newest
        # sample that leaves at least loss_min_hellos expected since (the loss window's
        # base); the first entry is (0, 0) until that many were.
        self._hellos: dict[tuple[str, str], deque[tuple[int, int]]] = {}
        self._sampled: dict[tuple[str, str], float] = {}  # when each was last sampled
        self._read: dict[str, tuple[float, float]] = {}  # per neighbour: last loss read, when
        # Per neighbour, (when, its downs count so far) back to the rate window's base, and
        # when its count last rose: a link is read while it went down within LOSS_KEEP_S.
        self._downs: dict[str, deque[tuple[float, int]]] = {}
        self._downs_rose: dict[str, float] = {}
        # The neighbours whose downs count rose at the last sample (their link failed since).
        self.failed: frozenset[str] = frozenset()
        # The neighbours sending adverts above the storm threshold while isolated: what
        # they send is dropped unread, so no refusal reads it (an isolation is kept
        # while they do).
        self.storming: frozenset[str] = frozenset()

    def _losses(self, links: Iterable[LinkSample], at: float
                ) -> dict[tuple[str, str], float | None]:
        """The loss of each link with hello counts over at least loss_min_hellos of its
        hellos; None while it has had fewer."""
        out: dict[tuple[str, str], float | None] = {}
        for link in links:
            if link.hellos is None:
                continue
            key = (link.neighbor, link.ifname)
            heard, expected = link.hellos
            w = self._hellos.get(key)
            if w is None or expected < w[-1][1] or heard < w[-1][0]:
                w = self._hellos[key] = deque([(0, 0)])  # new, or the sensor forgot it
            w.append((heard, expected))
            self._sampled[key] = at
            while len(w) > 2 and expected - w[1][1] >= self.loss_min_hellos:
                w.popleft()
            h0, e0 = w[0]
            out[key] = (None if expected - e0 < self.loss_min_hellos
                        else min(1.0, max(0.0, 1.0 - (heard - h0) / (expected - e0))))
        for gone in [k for k, t in self._sampled.items() if at - t > LOSS_KEEP_S]:
            del self._hellos[gone], self._sampled[gone]
        return out

    def _held(self, present: set[str], at: float) -> list[tuple[str, float]]:
        """The last loss read of each neighbour missing from this sample, for LOSS_HOLD_S."""
        for name in [n for n, (_, t) in self._read.items() if at - t > LOSS_HOLD_S]:
            del self._read[name]
        return [(n, v) for n, (v, _) in sorted(self._read.items()) if n not in present]

    def _link_downs(self, obs: Observation, last: Observation | None) -> list[Reading]:
        """Each neighbour's downs per minute over the rate window (a flapping link), read
        while it went down within LOSS_KEEP_S. A neighbour new to the counts went from 0
        since the last sample (its first down counts); a count that went back (a restart)
        starts anew."""
        out: list[Reading] = []
        threshold = self.thresholds[Signal.DOWNS]
        at = obs.at
        failed: set[str] = set()
        for name, count in obs.link_downs:
            w = self._downs.get(name)
            if w is None or count < w[-1][1]:
                fresh = w is None and last is not None and count > 0
                w = self._downs[name] = deque([(last.at, 0)] if fresh and last else [])
                if fresh:
                    failed.add(name)
            elif count > w[-1][1]:
                failed.add(name)
            if name in failed:
                self._downs_rose[name] = at
            w.append((at, count))
            while len(w) > 1 and w[1][0] <= at - self.rate_window_s:
                w.popleft()
            if at - self._downs_rose.get(name, -LOSS_KEEP_S - 1.0) > LOSS_KEEP_S:
                continue
            base_at, base = w[0]
            rate = _rate(count, base, max(self.rate_window_s, at - base_at), 60.0)
            out.append(Reading(Signal.DOWNS, Target("link", name), rate, threshold))
        present = {name for name, _ in obs.link_downs}
        for name in [n for n in self._downs if n not in present]:
            del self._downs[name]
            self._downs_rose.pop(name, None)
        self.failed = frozenset(failed)
        return out

    def _windowed(self, obs: Observation) -> Observation:
        """The window's base for *obs*; a counter that went back (a restart) starts anew."""
        w = self._window
        if w and (obs.failovers_total < w[-1].failovers_total
                  or obs.rejected_total < w[-1].rejected_total
                  or obs.changes_total < w[-1].changes_total):
            w.clear()
        w.append(obs)
        while len(w) > 1 and w[1].at <= obs.at - self.rate_window_s:
            w.popleft()
        return w[0]

    def sample(self, obs: Observation) -> list[Reading]:
        """Every signal's reading for this observation (links: one per neighbour)."""
        t = self.thresholds
        last = self._last
        span = obs.at - last.at if last is not None else 0.0
        self._last = obs
        self.samples_total += 1
        out: list[Reading] = []
        losses = self._losses(obs.links, obs.at)
        links = _advertised(obs.links)
        for name, held in self._held({link.neighbor for link in links}, obs.at):
            out.append(Reading(Signal.LOSS, Target("link", name), held, t[Signal.LOSS]))
        for link in links:
            target = Target("link", link.neighbor)
            loss = link.loss if link.hellos is None else losses[(link.neighbor, link.ifname)]
            if loss is not None:
                self._read[link.neighbor] = (loss, obs.at)
                out.append(Reading(Signal.LOSS, target, loss, t[Signal.LOSS]))
            if link.rtt_s is not None:
                out.append(Reading(Signal.RTT, target, link.rtt_s, t[Signal.RTT]))
        out += self._link_downs(obs, last)
        out.append(Reading(Signal.LATENESS, SELF, obs.lateness_s, t[Signal.LATENESS]))
        prev = last or obs
        base = self._windowed(obs)
        over = max(self.rate_window_s, obs.at - base.at)
        # Refused adverts: per sending neighbour, and on the node all of them but those of
        # the neighbours that cross on their own (one flooding neighbour is its link's
        # incident, not the node's too; refusals spread over many neighbours, each under
        # the threshold, still add up on the node).
        by_nb, by_nb_base = dict(obs.rejected_from), dict(base.rejected_from)
        explained = 0.0
        for name, n in sorted(by_nb.items()):
            r = Reading(Signal.REJECTED, Target("link", name),
                        _rate(n, by_nb_base.get(name, 0), over, 60.0), t[Signal.REJECTED])
            out.append(r)
            explained += r.value if r.crossed else 0.0
        by_iso = dict(base.isolated_from)
        self.storming = frozenset(
            name for name, n in obs.isolated_from
            if _rate(n, by_iso.get(name, 0), over, 60.0) > t[Signal.REJECTED])
        by_edge = dict(base.edge_changes)
        noisy = sum(r for r in (_rate(n, by_edge.get(edge, 0), over, 60.0)
                                for edge, n in obs.edge_changes) if r >= NOISY_EDGE_PER_MIN)
        for signal, value in (
                (Signal.FAILOVERS, _rate(obs.failovers_total, base.failovers_total, over, 60.0)),
                (Signal.REJECTED, max(0.0, _rate(obs.rejected_total, base.rejected_total,
                                                 over, 60.0) - explained)),
                (Signal.CHURN, max(0.0, _rate(obs.changes_total, base.changes_total, over, 60.0)
                                   - noisy))):
            out.append(Reading(signal, SELF, value, t[signal]))
        out.append(Reading(Signal.CPU, SELF, _rate(obs.cpu_seconds, prev.cpu_seconds, span, 1.0),
                           t[Signal.CPU]))
        if obs.identity_age is not None:
            out.append(Reading(Signal.IDENTITY, SELF, obs.identity_age, t[Signal.IDENTITY]))
        return out


def _advertised(links: Iterable[LinkSample]) -> list[LinkSample]:
    """Per neighbour, its least lossy up interface (the one our advert's cost comes from),
    or its least lossy one when none is up."""
    best: dict[str, LinkSample] = {}
    for s in links:
        cur = best.get(s.neighbor)
        if cur is None or (not s.up, s.loss) < (not cur.up, cur.loss):
            best[s.neighbor] = s
    return [best[n] for n in sorted(best)]
