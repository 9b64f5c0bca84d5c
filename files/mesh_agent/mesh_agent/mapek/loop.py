"""The MAPE-K loop of one node: Monitor, Analyze, Plan, Execute over Knowledge (sans-I/O).

:meth:`MapeK.step` takes one :class:`~mesh_agent.mapek.monitor.Observation`
(its ``at`` is the time) and returns a :class:`Step`: the incidents opened,
decided and recovered, the executor's ops for the shell to carry out, and
what Knowledge must record (statistics and threshold changes). It performs
no I/O: the shell (``Agent._mapek_tick``) persists the step with
:meth:`mesh_agent.mapek.knowledge.Knowledge.record` and applies the ops
through the cores' inputs.

Start-up. An agent's start is a burst: every topology change at once, and the
API's import taking a core for a second or two once the routing has settled
(:mod:`mesh_agent.startup`). None of it is an incident, so the loop *arms*
only once the node has been ready for ``settle_s`` (:data:`START_SETTLE_S` in
the agent; 0 in a bare core): until then it samples (the rates need a
baseline) and analyzes nothing. Once armed it stays armed: a node that loses
its readiness later is exactly what the loop is for.

Learning. When an incident recovers, the action that *actually ran* gets
the outcome: the chosen action when it was applied, else ``none`` (observe
mode and refused actions did nothing, so they teach what doing nothing
gives). The outcome is relative (:func:`mesh_agent.mapek.plan.succeeded`):
within the class's MTTR target and no slower than the median of its recent
recoveries (kept in memory, :data:`~mesh_agent.mapek.plan.BASELINE_N` per
class; after a restart the baseline starts empty and the target alone judges
until :data:`~mesh_agent.mapek.plan.BASELINE_MIN` recoveries). A link incident
whose routes are known is judged by its time to mitigate instead
(:func:`mesh_agent.mapek.plan.mitigated_in_time`: our routes off the link
within :data:`~mesh_agent.mapek.plan.TTM_TARGET_SAMPLES` intervals of the
detection; a link that carried none of them judges nothing). An incident
that opens within :data:`~mesh_agent.mapek.plan.COLLATERAL_S` of an action
applied for another one, on a node where nothing else is open (the fault that
explains both is over), charges that action one failure (once per action).
Knowledge also tunes the thresholds inside their bounds: an incident
that recovered on its own within ``false_alarm_s`` was a false alarm and
raises its signal's threshold by :data:`RAISE_STEP`; any other recovered
incident moves the threshold :data:`RELAX_STEP` of the way back to its
default.

Attribution. A failover storm or route churn on a node where a link is flapping
is that link's symptom: each time the link fails, every route over it fails over,
and each time it fails or comes back the graph changes and every path is
recomputed. One incident, one action: a symptom that opens while a
``flapping_link`` incident is open is not acted on (its action is ``none``,
outcome ``attributed``, its ``cause`` the link's incident), and a
``flapping_link`` that opens while a symptom is open takes it over (its hello
floor, if it had one, is lifted; its ``cause`` is set). An attributed symptom
teaches nothing: neither the statistics nor the thresholds learn from it. With
several links flapping the worst (most downs per minute) is the cause. The rule
is local. A node away from a flapping link sees its adverts, not its downs: there
the Monitor leaves the changes of any one noisy edge out of the churn reading
(:data:`~mesh_agent.mapek.monitor.NOISY_EDGE_PER_MIN`), so such a node opens no
``route_churn`` for it; churn spread over many links still does.

A hold-down is refused (``refused:sole_link``) on a link that is the node's only
way to that neighbour (``Observation.sole_links``): holding it down would cut
the neighbour off, which is worse than its flapping. A hold in force on a link
that becomes the only way (the other path failed meanwhile) is lifted at once.

Leases of actions that last. A disruptive action that lasts (an isolation) keeps its
lease for as long as it is in force, so the fleet-wide cap and the one-per-neighbourhood
rule hold for its whole life, not for its first TTL: the loop renews the lease once a
third of its TTL has passed (``Step.renewals``, answered with :meth:`MapeK.renewed`),
extends the action's effect to the renewed deadline (``Step.extends``), undoes the
action when the lease is gone or its deadline passes unrenewed (``lease_lost``: a holder
cut off from etcd stops before anyone else can be granted its slot), and hands the lease
back when the action ends. The shell is woken for these between samples
(:attr:`MapeK.next_due_at`, :meth:`MapeK.due`), as for a refused decision's retry.

Maintenance. While a window is open (``Observation.maintenance_until``,
:mod:`mesh_agent.mapek.maintenance`) an incident that opens is recorded with the action
``none`` and the outcome ``maintenance``: not acted on, no MTTR, no statistics, no
threshold change, no collateral charge. One still open at the first sample after the
window is decided then, as if it had just opened.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from mesh_agent.counters import Histogram
from mesh_agent.mapek.analyze import Analyzer, Detector, Incident, IncidentClass
from mesh_agent.mapek.execute import EXPIRY_S, Action, Executor, Op
from mesh_agent.mapek.lease import Refusal
from mesh_agent.mapek.monitor import (
    LINK_SIGNALS,
    LOSS_MIN_HELLOS,
    RATE_WINDOW_S,
    Monitor,
    Observation,
    Reading,
    Signal,
    Thresholds,
)
from mesh_agent.mapek.plan import (
    BASELINE_N,
    COLLATERAL_S,
    RULES,
    TTM_TARGET_SAMPLES,
    ActionKind,
    ActionStats,
    Policy,
    Stats,
    mitigated_in_time,
    succeeded,
)
from mesh_agent.mapek.safety import LEASE_TTL_S, Lease, LeaseProvider, RateLimit, Safety, Verdict

log = logging.getLogger("mesh_agent.mapek")

MTTR_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
RAISE_STEP = 0.10  # a false alarm raises its threshold by 10 %
RELAX_STEP = 0.05  # a real incident moves it 5 % of the way back to the default
# The agent arms its loop once it has been ready this long (the API comes at most
# 15 s after the start: mesh_agent.startup).
START_SETTLE_S = 15.0
ACTION_OUTCOMES = ("applied", "observed", "noop", "refused:rate_limited", "refused:no_lease",
                   "refused:stale_token", "refused:sole_link", "attributed", "maintenance")
MAINTENANCE = "maintenance"  # the outcome of an incident opened in a maintenance window
# A refused lease is asked again this long after one TTL: etcd revokes an expired lease
# from a sweep every 500 ms (docs/mapek.md, "Leases across a real network partition").
RETRY_SLACK_S = 0.5
# A held lease is renewed once this share of its TTL has passed, and asked again this
# often while no answer renewed it (etcd unreachable), until its deadline.
RENEW_AFTER = 1 / 3
RENEW_RETRY_S = 1.0
# Link incidents about the traffic over the link: judged by their time to mitigate (our
# routes off the link). An advert storm from a neighbour is about what it sends.
TRAFFIC_CLASSES = frozenset({IncidentClass.LOSSY_LINK, IncidentClass.SLOW_LINK,
                             IncidentClass.FLAPPING_LINK})
# A failover storm and route churn are the symptoms of a flapping link when one is open
# on the node at the same time (attribution rule, module docstring).
SYMPTOMS: dict[IncidentClass, IncidentClass] = {
    IncidentClass.FAILOVER_STORM: IncidentClass.FLAPPING_LINK,
    IncidentClass.ROUTE_CHURN: IncidentClass.FLAPPING_LINK,
}


@dataclass(frozen=True)
class _Pending:
    inc: Incident
    kind: ActionKind


@dataclass
class _Held:
    """The lease of an action in force that lasts; ``asked_at``: a renewal is under way
    or was not answered (asked again RENEW_RETRY_S later)."""

    lease: Lease
    action: Action
    asked_at: float | None = None


@dataclass
class Step:
    readings: list[Reading] = field(default_factory=list)
    opened: list[Incident] = field(default_factory=list)
    decided: list[Incident] = field(default_factory=list)
    recovered: list[Incident] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    stats: list[tuple[str, str, ActionStats]] = field(default_factory=list)
    thresholds: list[tuple[str, float, str]] = field(default_factory=list)
    # Link incidents whose traffic left the link in this step (Incident.mitigated_at).
    mitigated: list[Incident] = field(default_factory=list)
    # A blocking lease provider (etcd): requests for the shell to make off the event
    # loop, answered with MapeK.leased; and leases it no longer needs, to release.
    lease_requests: list[LeaseRequest] = field(default_factory=list)
    releases: list[Lease] = field(default_factory=list)
    # The leases of disruptive actions that last (isolate_origin), kept while the action
    # is in force (MapeK.held): the shell validates one before it acts, and does not
    # release it.
    holds: list[Lease] = field(default_factory=list)
    # Held leases to renew (MapeK.renewed answers), and the lasting actions whose effect
    # now runs to a later deadline (their renewed lease's, or their own expiry if sooner).
    renewals: list[Lease] = field(default_factory=list)
    extends: list[tuple[Action, float]] = field(default_factory=list)
    # Collateral charges made in this step (MapeK._collateral), for the shell to record.
    charges: list[Charge] = field(default_factory=list)


@dataclass(frozen=True)
class Charge:
    """An applied action charged one failure: incident *by* (of class *by_cls*) opened
    *after_s* after *action* was applied for incident *source* (of class *cls*)."""

    source: int
    cls: str
    action: str
    by: int
    by_cls: str
    after_s: float

    def as_dict(self) -> dict[str, object]:
        return {"incident": self.source, "class": self.cls, "action": self.action,
                "by_incident": self.by, "by_class": self.by_cls,
                "after_seconds": round(self.after_s, 3)}


@dataclass(frozen=True)
class LeaseRequest:
    incident: int
    holder: str
    action: str
    ttl_s: float


class MapeK:
    def __init__(
        self,
        node: str,
        mode: str,
        policy: Policy,
        hello_interval_s: float,
        *,
        interval_s: float = 5.0,
        thresholds: Thresholds | None = None,
        stats: Stats | None = None,
        next_id: int = 1,
        leases: LeaseProvider | None = None,
        limit: RateLimit | None = None,
        detector: Detector | None = None,
        false_alarm_s: float | None = None,
        settle_s: float = 0.0,
        lease_ttl_s: float = LEASE_TTL_S,
        available: frozenset[ActionKind] | None = None,
        loss_min_hellos: int = LOSS_MIN_HELLOS,
    ) -> None:
        self.node, self.mode, self.policy = node, mode, policy
        # The actions the shell can carry out here (None: every kind, as in a bare core);
        # the policy chooses among these only.
        self.available = available
        self.monitor = Monitor(thresholds, loss_min_hellos=loss_min_hellos)
        self.analyzer = Analyzer(detector, next_id)
        self.safety = Safety(node, mode, leases, limit, lease_ttl_s)
        self.executor = Executor(hello_interval_s)
        self.stats: dict[tuple[str, str], ActionStats] = {
            k: ActionStats(v.tries, v.successes, v.mttr_sum) for k, v in (stats or {}).items()}
        # An incident that cleared by itself within this many seconds of being raised
        # was a blip: its threshold was too low.
        self.false_alarm_s = false_alarm_s if false_alarm_s is not None else 6 * interval_s
        # A link incident's action succeeded when our traffic had left the link by then.
        self.ttm_target_s = TTM_TARGET_SAMPLES * interval_s
        # An MTTR is known to one sample: the relative reward's slack (plan.succeeded).
        self.interval_s = interval_s
        self.actions_total: dict[tuple[str, str], int] = {}
        self.mttr: dict[str, Histogram] = {}
        self.ttm: dict[str, Histogram] = {}  # time to mitigate, per class
        # Per neighbour, the last sample in which any of our routes went over it, and how
        # many did then (a link incident's ``carried``).
        self._carrying: dict[str, tuple[float, int]] = {}
        self.steps_total = 0
        self.settle_s = settle_s
        self.armed = settle_s <= 0
        self._ready_since: float | None = None
        self.pending: dict[int, _Pending] = {}  # incident id: waiting for its lease
        self.held: dict[int, _Held] = {}  # fencing token: the lease of a lasting action
        # The reward's baseline: each class's last recoveries (any action).
        self.recent: dict[str, deque[float]] = {}
        # The last action applied (time, class, action, incident), until an incident
        # opened within COLLATERAL_S charged it or the window passed.
        self._applied: tuple[float, str, str, int] | None = None
        # The neighbours whose direct link is our only way to them (the last observation).
        self._sole: frozenset[str] = frozenset()
        # Whether a maintenance window was open at the last sample.
        self.in_maintenance = False

    @property
    def thresholds(self) -> Thresholds:
        return self.monitor.thresholds

    def step(self, obs: Observation) -> Step:
        now = obs.at
        self.steps_total += 1
        out = Step(readings=self.monitor.sample(obs))
        if not self.armed:
            if not obs.ready:
                self._ready_since = None
                return out
            self._ready_since = now if self._ready_since is None else self._ready_since
            if now - self._ready_since < self.settle_s:
                return out
            self.armed = True
        self._sole = obs.sole_links
        out.ops += self.executor.lift_holds(obs.sole_links)
        # An isolation whose neighbour has become some node's only way to us (the topology
        # changed since): lifted, or that node's adverts would go stale here.
        out.ops += self.executor.lift(ActionKind.ISOLATE_ORIGIN, obs.isolated_cut, "cut_off")
        analysis = self.analyzer.analyze(out.readings, now)
        self.executor.still_bad({r.target.name for r in out.readings
                                 if r.signal in LINK_SIGNALS and r.crossed}, now)
        # A held link is still bad while it fails again (a penalty per flap, RFC 2439's per
        # withdrawal, not per sample) or its hellos still read lossy (a held link cannot
        # fail: without the loss the hold would decay while the fault goes on).
        self.executor.still_bad(self.monitor.failed
                                | {r.target.name for r in out.readings
                                   if r.signal == Signal.LOSS and r.crossed},
                                now, ActionKind.HOLD_DOWN_LINK)
        # An isolated neighbour is still bad while it storms: its adverts are dropped
        # unread, so only their count while isolated tells (Monitor.storming).
        self.executor.still_bad(self.monitor.storming, now, ActionKind.ISOLATE_ORIGIN)
        out.opened = analysis.opened
        # Open before this step and still open (recovered ones left the analyzer's table).
        older = len(self.analyzer.open) > len(analysis.opened)
        self.in_maintenance = obs.maintenance_until is not None and now < obs.maintenance_until
        if not self.in_maintenance:
            out.ops += self._after_window(now, {i.id for i in analysis.opened}, out)
        for inc in analysis.opened:
            if self.in_maintenance:
                self._defer(inc, now, out)
                continue
            cause = self._cause_of(inc)
            if cause is not None:  # a symptom: neither acted on nor charged to an action
                self._attribute(inc, cause, now, out)
                continue
            self._collateral(inc, now, older, out)
            out.ops += self._decide(inc, now, out)
            if inc.id not in self.pending:
                out.decided.append(inc)
            out.ops += self._takes_over(inc, {i.id for i in analysis.opened}, out)
        out.ops += self._retry_refused(now, out)
        self._mitigated(obs, out.readings, analysis.opened, analysis.recovered, now, out)
        for inc in analysis.recovered:
            out.recovered.append(inc)
            out.ops += self.executor.recovered(inc.target)
            self._learn(inc, out)
        out.ops += self.executor.tick(now)
        out.ops += self._keep_held(now, out)
        return out

    def _mitigated(self, obs: Observation, readings: list[Reading], opened: list[Incident],
                   recovered: list[Incident], now: float, out: Step) -> None:
        """Time to mitigate a link incident: when this node's traffic left the bad link
        for good. ``carried`` is the most of our installed routes seen over the link, at
        its detection (or in the RATE_WINDOW_S before it: a flapping link may be down at
        that very sample) and in the samples after it in which the link reads bad.
        ``mitigated_at`` is when the last route left the link, as the route programmer
        timed it (``routes_left``, else this sample's time), seen at the first bad sample
        with none after the last one with some, and never before the detection (traffic
        that left before it was mitigated at once). Traffic back on the link unsets it;
        samples in which the link reads clear again change neither (traffic that leaves a
        link that reads clear was not moved off a bad one). Final when the incident
        recovers (the histogram counts it then). A link that carried nothing has nothing
        to mitigate; one with no detour never is."""
        if obs.routes_via is None:
            return
        via, left = dict(obs.routes_via), dict(obs.routes_left)
        for name, n in via.items():
            if n:
                self._carrying[name] = (now, n)
        for inc in opened:
            if inc.target.kind == "link" and inc.cls in TRAFFIC_CLASSES:
                at, n = self._carrying.get(inc.target.name, (now, 0))
                inc.carried = n if now - at <= RATE_WINDOW_S else 0
        bad = {r.target for r in readings if r.crossed}
        for inc in self.analyzer.open.values():
            if inc.carried is None or inc.target not in bad:
                continue
            n, before = via.get(inc.target.name, 0), (inc.carried, inc.mitigated_at)
            if n:
                inc.carried, inc.mitigated_at = max(inc.carried, n), None
            elif inc.carried and inc.mitigated_at is None:
                inc.mitigated_at = min(now, max(inc.detected_at, left.get(inc.target.name, now)))
            if (inc.carried, inc.mitigated_at) != before:
                out.mitigated.append(inc)
        for inc in recovered:
            if inc.mitigated_at is not None:
                ttm = self.ttm.setdefault(str(inc.cls), Histogram(MTTR_BUCKETS))
                ttm.observe(inc.mitigated_at - inc.detected_at)

    def _defer(self, inc: Incident, now: float, out: Step) -> None:
        """*inc* opened in a maintenance window: recorded, not acted on."""
        inc.decided_at, inc.action, inc.action_outcome = now, str(ActionKind.NONE), MAINTENANCE
        key = (str(ActionKind.NONE), MAINTENANCE)
        self.actions_total[key] = self.actions_total.get(key, 0) + 1
        out.decided.append(inc)
        log.info("incident %d %s on %s: opened in a maintenance window, not acted on", inc.id,
                 inc.cls, inc.target)

    def _after_window(self, now: float, this_step: set[int], out: Step) -> list[Op]:
        """The incidents opened in a maintenance window that are still open once it has
        ended: decided now, as if they had just opened (the change broke something)."""
        ops: list[Op] = []
        for inc in sorted(self.analyzer.open.values(), key=lambda i: i.id):
            if inc.action_outcome != MAINTENANCE or inc.id in this_step:
                continue
            log.info("incident %d %s on %s: still open after the maintenance window, "
                     "deciding", inc.id, inc.cls, inc.target)
            if (cause := self._cause_of(inc)) is not None:
                self._attribute(inc, cause, now, out)
                continue
            ops += self._decide(inc, now, out)
            if inc.id not in self.pending:
                out.decided.append(inc)
        return ops

    def _cause_of(self, inc: Incident) -> Incident | None:
        """The open incident *inc* is a symptom of (SYMPTOMS), the worst if several."""
        cls = SYMPTOMS.get(IncidentClass(inc.cls))
        causes = [i for i in self.analyzer.open.values() if i.cls == cls]
        return max(causes, key=lambda i: (i.value, -i.id)) if causes else None

    def _attribute(self, inc: Incident, cause: Incident, now: float, out: Step) -> None:
        inc.cause = cause.id
        inc.decided_at, inc.action, inc.action_outcome = now, str(ActionKind.NONE), "attributed"
        key = (str(ActionKind.NONE), "attributed")
        self.actions_total[key] = self.actions_total.get(key, 0) + 1
        out.decided.append(inc)
        log.info("incident %d %s on %s: a symptom of incident %d %s on %s", inc.id, inc.cls,
                 inc.target, cause.id, cause.cls, cause.target)

    def _takes_over(self, cause: Incident, this_step: set[int], out: Step) -> list[Op]:
        """*cause* just opened: the incidents open before this step that are its symptoms
        become attributed to it (those opened in this step are, when their turn comes); a
        hello floor held for one of them is lifted (the cause's action answers both)."""
        ops: list[Op] = []
        for inc in list(self.analyzer.open.values()):
            if (inc.cause is not None or inc.id in this_step
                    or SYMPTOMS.get(IncidentClass(inc.cls)) != cause.cls
                    or self._cause_of(inc) is not cause):
                continue
            inc.cause = cause.id
            if inc.action == ActionKind.LENGTHEN_HELLO and inc.action_outcome == "applied":
                ops += self.executor.recovered(inc.target)
            out.decided.append(inc)
            log.info("incident %d %s on %s: a symptom of incident %d %s on %s, opened since",
                     inc.id, inc.cls, inc.target, cause.id, cause.cls, cause.target)
        return ops

    def _decide(self, inc: Incident, now: float, out: Step) -> list[Op]:
        available = self.available
        if inc.target.kind != "link":  # isolate_origin isolates a neighbour, not the node
            available = (available if available is not None else frozenset(ActionKind)) \
                - {ActionKind.ISOLATE_ORIGIN}
        kind = ActionKind(self.policy.choose(inc.cls, self.stats, available))
        verdict = self.safety.check(kind, now)
        if verdict.outcome == "pending:lease":
            inc.action, inc.action_outcome = str(kind), verdict.outcome
            self.pending[inc.id] = _Pending(inc, kind)
            out.lease_requests.append(
                LeaseRequest(inc.id, self.node, str(kind), self.safety.lease_ttl_s))
            log.info("incident %d %s on %s: %s waits for its lease", inc.id, inc.cls,
                     inc.target, kind)
            return []
        return self._carry_out(inc, kind, verdict, now, out)

    def _refused(self) -> list[tuple[Incident, float]]:
        """Open incidents whose lease was refused, not waiting for another answer, each
        with when it is due again: a lease TTL and RETRY_SLACK_S after the refusal."""
        return [(inc, inc.decided_at + self.safety.lease_ttl_s + RETRY_SLACK_S)
                for inc in self.analyzer.open.values()
                if inc.action_outcome == "refused:no_lease" and inc.cause is None
                and inc.id not in self.pending and inc.decided_at is not None]

    @property
    def next_due_at(self) -> float | None:
        """When something is due between two samples (None: nothing is): a refused
        decision's retry, a held lease's renewal or its deadline. The shell wakes the loop
        then (:meth:`due`) rather than at the next sample."""
        return min([due for _, due in self._refused()]
                   + [self._renew_at(h) for h in self.held.values()]
                   + [h.lease.expires_at for h in self.held.values()], default=None)

    def due(self, now: float) -> Step:
        """What is due between two samples (no reading taken): the retries of refused
        decisions, and the held leases' renewals and deadlines."""
        out = Step()
        out.ops += self._retry_refused(now, out)
        out.ops += self._keep_held(now, out)
        return out

    def _renew_at(self, held: _Held) -> float:
        if held.asked_at is not None:
            return held.asked_at + RENEW_RETRY_S
        ttl = self.safety.lease_ttl_s
        return held.lease.expires_at - ttl + RENEW_AFTER * ttl

    def _keep_held(self, now: float, out: Step) -> list[Op]:
        """The held leases: handed back once their action ended, the action undone once
        its lease's deadline passed unrenewed, renewed when due."""
        ops: list[Op] = []
        leases = self.safety.leases
        for token, held in list(self.held.items()):
            a = held.action
            if self.executor.active.get((a.kind, a.target)) != a:  # ended (or never began)
                del self.held[token]
                self._hand_back(held.lease, out)
            elif now >= held.lease.expires_at:
                ops += self._lost(token, "ran out unrenewed")
            elif now >= self._renew_at(held):
                held.asked_at = now
                if leases.blocking:
                    out.renewals.append(held.lease)
                else:
                    ops += self._renewed(token, leases.renew(held.lease,
                                                              self.safety.lease_ttl_s, now),
                                         now, out)
        return ops

    def stop(self) -> list[Lease]:
        """The agent stops: the held leases, for the shell to hand back (their actions
        end with the process)."""
        leases = [h.lease for h in self.held.values()]
        self.held.clear()
        return leases

    def renewed(self, token: int, answer: Lease | None, now: float) -> Step:
        """A blocking provider's answer to a renewal (the shell calls this with what its
        worker thread got)."""
        out = Step()
        out.ops += self._renewed(token, answer, now, out)
        return out

    def _renewed(self, token: int, answer: Lease | None, now: float, out: Step) -> list[Op]:
        held = self.held.get(token)
        if held is None:  # its action ended meanwhile: the lease was handed back
            return []
        if answer is None:
            return self._lost(token, "is gone")
        if answer.expires_at > held.lease.expires_at:
            held.lease, held.asked_at = answer, None
            out.extends.append((held.action, min(held.action.expires_at, answer.expires_at)))
        return []  # not renewed (no answer): asked again RENEW_RETRY_S after the request

    def _lost(self, token: int, why: str) -> list[Op]:
        """The held lease *token* is no longer ours: its action undone (``lease_lost``)."""
        a = self.held.pop(token).action
        log.warning("%s on %s: its lease %s, undone", a.kind, a.target, why)
        return self.executor.end(a, "lease_lost")

    def _hand_back(self, lease: Lease, out: Step) -> None:
        """A lease no longer needed: released by the shell (a blocking provider) or here."""
        if self.safety.leases.blocking:
            out.releases.append(lease)
        else:
            self.safety.leases.release(lease)

    def _retry_refused(self, now: float, out: Step) -> list[Op]:
        """Decide again for open incidents whose lease was refused a lease TTL ago or more
        (and RETRY_SLACK_S). Whoever held the slot then (the cap, the neighbourhood) was
        granted it before, so its lease has run out by then, and etcd has swept it; a
        quorum that came back is used too. At the samples, and at the time the shell is
        woken for (``next_due_at``)."""
        ops: list[Op] = []
        for inc, due in self._refused():
            if now < due:
                continue
            log.info("incident %d %s on %s: a lease TTL since its lease was refused, "
                     "deciding again", inc.id, inc.cls, inc.target)
            ops += self._decide(inc, now, out)
            if inc.id not in self.pending:
                out.decided.append(inc)
        return ops

    def leased(self, incident: int, answer: Lease | Refusal, now: float) -> Step:
        """The lease a blocking provider answered for a pending decision (the shell calls
        this with what its worker thread got); the step carries the decision and its ops."""
        out = Step()
        pending = self.pending.pop(incident, None)
        if pending is None or pending.inc.recovered_at is not None:
            # Recovered (or gone) while waiting: nothing left to do under the lease.
            if isinstance(answer, Lease):
                out.releases.append(answer)
            if pending is not None:
                pending.inc.action_outcome = "refused:recovered"
                out.decided.append(pending.inc)
            return out
        out.ops = self._carry_out(pending.inc, pending.kind, Safety.settle(answer), now, out)
        out.decided.append(pending.inc)
        return out

    def _carry_out(self, inc: Incident, kind: ActionKind, verdict: Verdict, now: float,
                   out: Step) -> list[Op]:
        action: Action = self.executor.build(
            kind, inc.target, inc.id, now, verdict.lease.token if verdict.lease else None)
        outcome, ops = verdict.outcome, []
        if verdict.allowed and kind == ActionKind.HOLD_DOWN_LINK and inc.target.name in self._sole:
            outcome = "refused:sole_link"
        elif verdict.allowed and kind != ActionKind.NONE:
            ops = self.executor.start(action, now)
            if action.disruptive and not ops:  # the fence refused its token
                outcome = "refused:stale_token"
            if verdict.lease is not None and (EXPIRY_S[kind] <= 0 or not ops):
                # One-shot (or refused): done with the lease. An action that lasts keeps
                # it while it is in force (renewed: module docstring).
                self._hand_back(verdict.lease, out)
            elif verdict.lease is not None and action.disruptive:
                out.holds.append(verdict.lease)  # validated by the shell before it acts
                self.held[verdict.lease.token] = _Held(verdict.lease, action)
        inc.decided_at, inc.action, inc.action_outcome = now, str(kind), outcome
        if outcome == "applied" and kind != ActionKind.NONE:
            self._applied = (now, str(inc.cls), str(kind), inc.id)
        key = (str(kind), outcome)
        self.actions_total[key] = self.actions_total.get(key, 0) + 1
        log.info("incident %d %s on %s (%s %.3g > %.3g): %s -> %s%s", inc.id, inc.cls,
                 inc.target, inc.signal, inc.value, inc.threshold, kind, outcome,
                 f" ({verdict.reason})" if verdict.reason else "")
        return ops

    def _learn(self, inc: Incident, out: Step) -> None:
        if inc.resolution == "gone" or inc.action_outcome == MAINTENANCE:
            return  # not a recovery, or not a fault: no MTTR, no credit, no tuning
        mttr = inc.mttr_s or 0.0
        self.mttr.setdefault(str(inc.cls), Histogram(MTTR_BUCKETS)).observe(mttr)
        if inc.cause is not None:  # a symptom: its cause's incident is what teaches
            return
        ran = inc.action if inc.action_outcome == "applied" else str(ActionKind.NONE)
        recent = self.recent.setdefault(str(inc.cls), deque(maxlen=BASELINE_N))
        verdict = None if inc.action is None else self._judge(inc, mttr, recent)
        if verdict is not None:
            s = self.stats.setdefault((str(inc.cls), str(ran)), ActionStats())
            s.record(verdict, mttr)
            out.stats.append((str(inc.cls), str(ran), s))
        recent.append(mttr)
        t = self.thresholds
        signal = Signal(inc.signal)
        old = t[signal]
        if ran == ActionKind.NONE and mttr <= self.false_alarm_s:
            new, reason = t.set(signal, old * (1 + RAISE_STEP)), f"false_alarm:{inc.id}"
        else:
            default = t.bounds[signal].default
            new, reason = t.set(signal, old + (default - old) * RELAX_STEP), f"relax:{inc.id}"
        if abs(new - old) > 1e-9:
            out.thresholds.append((str(signal), new, reason))

    def _judge(self, inc: Incident, mttr: float, recent: deque[float]) -> bool | None:
        """Whether the action that ran succeeded (None: nothing to judge). A link incident
        whose routes were known, by its time to mitigate; any other, by its MTTR against
        the class's target and recent recoveries (mesh_agent.mapek.plan)."""
        if inc.target.kind == "link" and inc.carried is not None:
            return mitigated_in_time(inc.carried, inc.ttm_s, self.ttm_target_s)
        return succeeded(IncidentClass(inc.cls), mttr, recent, self.interval_s)

    def _collateral(self, inc: Incident, now: float, older: bool, out: Step) -> None:
        """Charge the last applied action one failure when *inc* opened within
        COLLATERAL_S of it on a node where nothing else was open (*older*: an incident
        opened before this step is still open). While another incident, the action's own
        among them, is still open, the node is in the middle of a fault, which explains a
        new incident as well as the action does: nothing is charged."""
        if self._applied is None:
            return
        at, cls, action, source = self._applied
        if now - at > COLLATERAL_S:
            self._applied = None
            return
        if inc.id == source or older or now <= at:  # opened with it: not its consequence
            return
        self._applied = None
        s = self.stats.setdefault((cls, action), ActionStats())
        s.charge()
        out.stats.append((cls, action, s))
        out.charges.append(Charge(source, cls, action, inc.id, str(inc.cls), now - at))
        log.info("incident %d %s on %s opened %.0f s after %s for incident %d: charged "
                 "to it", inc.id, inc.cls, inc.target, now - at, action, source)

    def action_stats(self) -> list[dict[str, object]]:
        """What Knowledge holds per (class, action) arm, as ``/v1/incidents`` serves it:
        tries, successes, failures (collateral charges among them), the mean MTTR, and
        whether the arm is the rule table's choice (the learned policy's prior)."""
        rules = {str(c): str(a) for c, a in RULES.items()}
        out: list[dict[str, object]] = []
        for (cls, action), s in sorted(list(self.stats.items())):
            mean = s.mean_mttr
            out.append({"class": cls, "action": action, "tries": s.tries,
                        "successes": s.successes, "failures": s.failures,
                        "mean_mttr_seconds": None if mean is None else round(mean, 3),
                        "rule": rules.get(cls) == action})
        return out

    def active_actions(self) -> list[dict[str, object]]:
        return [a.as_dict() for a in list(self.executor.active.values())]
