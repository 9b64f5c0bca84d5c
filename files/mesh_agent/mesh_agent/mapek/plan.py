"""Plan: which action answers an incident, from the actions that apply to its class.

Two policies behind one interface (``mapek.policy``):

- ``fixed`` (:class:`FixedPolicy`): a rule table, one action per class. It is
  the control arm the learned policy is measured against.
- ``learned`` (:class:`ThompsonPolicy`): Thompson sampling over each
  (class, action)'s history in Knowledge. An action *succeeds* on an incident
  when the incident recovers within its class's MTTR target
  (:data:`MTTR_TARGET_S`) *and* no slower than the median of the class's
  recent recoveries (:func:`succeeded`; the last :data:`BASELINE_N`, whatever
  action ran, once there are :data:`BASELINE_MIN` of them; by more than one loop
  interval, the MTTR's resolution), so the Bernoulli
  arm folds both success and MTTR into one reward, and an action only earns
  credit by beating what the class usually takes: with a fixed target alone,
  every arm "succeeds" when faults end by themselves well inside it and the
  arms cannot be told apart. An applied action that is followed, within
  :data:`COLLATERAL_S`, by another incident on a node where nothing else is
  open any more is charged one more failure (the loop's ``_collateral``): a
  side effect or a relapse, such as route churn once the fault is over but
  the hello is still long, counts against the action.
  A *link* incident is judged otherwise when the node knows its routes
  (:func:`mitigated_in_time`): a link's fault lasts as long as it lasts whatever
  is done, so its MTTR says nothing of the action (docs/mapek.md, sessions 41
  to 43: equal for every action, ``none`` included); what an action can change
  is whether this node's traffic leaves the bad link. The action succeeds when
  the routes that crossed the link at detection had left it within
  :data:`TTM_TARGET_SAMPLES` loop intervals (the time to mitigate), and fails
  when they had not; a link that carried none of our routes judges nothing
  (no action could help here, so none is credited or blamed).
  Each arm's success probability has a Beta(1 + successes,
  1 + failures) posterior, except the rule table's own choice for the class
  (what :class:`FixedPolicy` would do here), which starts with
  :data:`PRIOR_SUCCESSES` pseudo-successes: an informative prior (Russo et al.,
  section 7.1), so a fresh node starts from the rules an operator already runs
  and explores the other arms less while it knows nothing (with 3, an
  alternative to a two-arm rule is tried about one time in five at first,
  rather than one in two). The policy draws one sample per applicable arm and
  takes the largest. Exploration thus fades by itself as evidence accumulates,
  and the prior's weight with it.

  W. R. Thompson, "On the likelihood that one unknown probability exceeds
  another in view of the evidence of two samples", Biometrika 25 (1933);
  S. Agrawal and N. Goyal, "Analysis of Thompson Sampling for the Multi-armed
  Bandit Problem", COLT 2012 (logarithmic regret for Beta-Bernoulli arms);
  D. Russo, B. Van Roy, A. Kazerouni, I. Osband and Z. Wen, "A Tutorial on
  Thompson Sampling", Foundations and Trends in Machine Learning 11(1), 2018.

  Cost: one ``betavariate`` per applicable arm (at most four) per incident.

The random generator is injected (``random.Random(seed)`` in tests and
experiments), so a choice is reproducible.

Example::

    >>> import random
    >>> p = ThompsonPolicy(random.Random(1))
    >>> stats = {("lossy_link", "quarantine_link"): ActionStats(20, 19, 300.0),
    ...          ("lossy_link", "none"): ActionStats(20, 2, 2000.0)}
    >>> p.choose(IncidentClass.LOSSY_LINK, stats)
    'quarantine_link'
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from mesh_agent.mapek.analyze import IncidentClass


class ActionKind(StrEnum):
    NONE = "none"  # wait and see: the control for every class
    QUARANTINE_LINK = "quarantine_link"  # raise a link's advertised cost (damped, RFC 2439)
    LENGTHEN_HELLO = "lengthen_hello"  # announce a longer hello interval for a while
    RESYNC_LSDB = "resync_lsdb"  # send our whole LSDB to the neighbour again
    HOLD_DOWN_LINK = "hold_down_link"  # keep a flapping link down after it fails (damped)
    # Descriptors only (disruptive: they need a lease, NoQuorum refuses them):
    RESTART_UNIT = "restart_unit"
    REREQUEST_IDENTITY = "rerequest_identity"
    ISOLATE_ORIGIN = "isolate_origin"


# Disruptive: they change another node's routing or stop a service.
DISRUPTIVE = frozenset({ActionKind.RESTART_UNIT, ActionKind.ISOLATE_ORIGIN,
                        ActionKind.REREQUEST_IDENTITY})

APPLICABLE: Mapping[IncidentClass, tuple[ActionKind, ...]] = {
    IncidentClass.LOSSY_LINK: (ActionKind.QUARANTINE_LINK, ActionKind.RESYNC_LSDB,
                               ActionKind.NONE),
    IncidentClass.SLOW_LINK: (ActionKind.QUARANTINE_LINK, ActionKind.NONE),
    IncidentClass.STARVED: (ActionKind.LENGTHEN_HELLO, ActionKind.RESTART_UNIT, ActionKind.NONE),
    IncidentClass.FAILOVER_STORM: (ActionKind.LENGTHEN_HELLO, ActionKind.NONE),
    IncidentClass.ADVERT_STORM: (ActionKind.ISOLATE_ORIGIN, ActionKind.NONE),
    IncidentClass.ROUTE_CHURN: (ActionKind.LENGTHEN_HELLO, ActionKind.NONE),
    IncidentClass.FLAPPING_LINK: (ActionKind.HOLD_DOWN_LINK, ActionKind.QUARANTINE_LINK,
                                  ActionKind.NONE),
    IncidentClass.STALE_IDENTITY: (ActionKind.REREQUEST_IDENTITY, ActionKind.NONE),
}

# The rule table of the fixed policy (the control arm).
RULES: Mapping[IncidentClass, ActionKind] = {
    IncidentClass.LOSSY_LINK: ActionKind.QUARANTINE_LINK,
    IncidentClass.SLOW_LINK: ActionKind.QUARANTINE_LINK,
    IncidentClass.STARVED: ActionKind.LENGTHEN_HELLO,
    IncidentClass.FAILOVER_STORM: ActionKind.LENGTHEN_HELLO,
    IncidentClass.ADVERT_STORM: ActionKind.ISOLATE_ORIGIN,
    IncidentClass.ROUTE_CHURN: ActionKind.NONE,
    IncidentClass.FLAPPING_LINK: ActionKind.HOLD_DOWN_LINK,
    IncidentClass.STALE_IDENTITY: ActionKind.REREQUEST_IDENTITY,
}

# An incident recovered within this is a success for the action taken.
MTTR_TARGET_S: Mapping[IncidentClass, float] = {
    IncidentClass.LOSSY_LINK: 60.0,
    IncidentClass.SLOW_LINK: 60.0,
    IncidentClass.STARVED: 120.0,
    IncidentClass.FAILOVER_STORM: 120.0,
    IncidentClass.ADVERT_STORM: 300.0,
    IncidentClass.ROUTE_CHURN: 120.0,
    IncidentClass.FLAPPING_LINK: 120.0,
    IncidentClass.STALE_IDENTITY: 120.0,
}


# The relative half of the reward: an incident must recover no slower than the median
# of the class's last BASELINE_N recoveries, once there are BASELINE_MIN of them.
BASELINE_N = 20
BASELINE_MIN = 5
# An incident opened on the node within this many seconds of an applied action (of
# another incident) is charged to that action as a failure, once per action.
COLLATERAL_S = 60.0
# Pseudo-successes of the rule table's own choice in the learned policy's prior
# (module docstring): a fresh node starts from the rules and explores from there.
PRIOR_SUCCESSES = 3


@dataclass
class ActionStats:
    """One (class, action) arm: how often tried, how often it succeeded, total MTTR."""

    tries: int = 0
    successes: int = 0
    mttr_sum: float = 0.0

    @property
    def failures(self) -> int:
        return self.tries - self.successes

    @property
    def mean_mttr(self) -> float | None:
        return self.mttr_sum / self.tries if self.tries else None

    def record(self, success: bool, mttr_s: float) -> None:
        self.tries += 1
        self.successes += int(success)
        self.mttr_sum += max(0.0, mttr_s)

    def charge(self) -> None:
        """One more failed try with no recovery of its own (a side effect of the action:
        the loop's collateral rule); ``mean_mttr`` then counts it as 0 s."""
        self.tries += 1


Stats = Mapping[tuple[str, str], ActionStats]


def succeeded(cls: IncidentClass, mttr_s: float, recent: Sequence[float] = (),
              resolution_s: float = 0.0) -> bool:
    """Whether an incident of *cls* that recovered in *mttr_s* is a success for the action
    that ran: within the class's target, and, once *recent* (the class's last recoveries,
    any action) holds :data:`BASELINE_MIN` of them, no slower than their median by more
    than *resolution_s*. An MTTR is only known to the loop's sampling interval (an
    incident recovers at a sample), so two within one interval cannot be told apart: the
    loop passes its interval. Without that slack, once one action answers every incident
    of a class the median is its own MTTR, and half of its recoveries, a hair slower on
    jitter, would count as failures (docs/mapek.md, run 4 of the runaway bench)."""
    if mttr_s > MTTR_TARGET_S[cls]:
        return False
    last = list(recent)[-BASELINE_N:]
    return len(last) < BASELINE_MIN or mttr_s <= statistics.median(last) + resolution_s


# A link incident is mitigated in time when our routes had left the link within this many
# loop intervals of its detection: by the next sample, with one to spare (a quarantine's
# cost moves them within about a second; the routing's own cost may have moved them
# before the detection, which counts as 0).
TTM_TARGET_SAMPLES = 2


def mitigated_in_time(carried: int, ttm_s: float | None, target_s: float) -> bool | None:
    """The outcome of a link incident's action from its time to mitigate (module
    docstring): None when the link carried none of our routes (nothing to judge), else
    whether they had left it within *target_s* of the detection (*ttm_s*: None, never)."""
    if carried <= 0:
        return None
    return ttm_s is not None and ttm_s <= target_s


def applicable(cls: IncidentClass, available: Iterable[ActionKind] | None = None
               ) -> tuple[ActionKind, ...]:
    """The class's actions this node can carry out (*available*; None: all of them).
    ``none`` is always among them."""
    if available is None:
        return APPLICABLE[cls]
    can = set(available) | {ActionKind.NONE}
    return tuple(a for a in APPLICABLE[cls] if a in can)


class Policy(Protocol):
    name: str

    def choose(self, cls: IncidentClass, stats: Stats,
               available: Iterable[ActionKind] | None = None) -> str: ...


class FixedPolicy:
    """The rule table; a rule this node cannot carry out (no executor, nothing configured
    for it) falls back to ``none``."""

    name = "fixed"

    def choose(self, cls: IncidentClass, stats: Stats,
               available: Iterable[ActionKind] | None = None) -> str:
        rule = RULES[cls]
        return str(rule if rule in applicable(cls, available) else ActionKind.NONE)


class ThompsonPolicy:
    """Beta-Bernoulli Thompson sampling over the class's applicable actions, with the
    rule table's choice as prior (module docstring)."""

    name = "learned"

    def __init__(self, rng: random.Random | None = None,
                 prior_successes: int = PRIOR_SUCCESSES) -> None:
        self.rng = rng or random.Random()
        self.prior_successes = prior_successes

    def probabilities(self, cls: IncidentClass, stats: Stats,
                      available: Iterable[ActionKind] | None = None) -> dict[str, float]:
        """One posterior draw per applicable action (each in [0, 1])."""
        draws = {}
        rule = FixedPolicy().choose(cls, stats, available)
        for action in applicable(cls, available):
            s = stats.get((str(cls), str(action)), ActionStats())
            prior = self.prior_successes if str(action) == rule else 0
            draws[str(action)] = self.rng.betavariate(1 + s.successes + prior, 1 + s.failures)
        return draws

    def choose(self, cls: IncidentClass, stats: Stats,
               available: Iterable[ActionKind] | None = None) -> str:
        draws = self.probabilities(cls, stats, available)
        # Ties (vanishingly rare with floats) go to the earlier entry of APPLICABLE.
        return max(draws, key=lambda a: draws[a])


def make_policy(name: str, rng: random.Random | None = None) -> Policy:
    if name == "fixed":
        return FixedPolicy()
    if name == "learned":
        return ThompsonPolicy(rng)
    raise ValueError(f"unknown policy {name!r}")
