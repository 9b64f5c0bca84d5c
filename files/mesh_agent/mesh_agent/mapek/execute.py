"""Execute: actions as descriptors with an undo and an expiry (sans-I/O).

The executor never touches the agent: it returns :class:`Op` s, ``apply`` or
``undo`` of an :class:`Action`, and the shell carries them to the cores'
inputs (:meth:`mesh_agent.link.sensor.LinkSensor.set_penalty` for a link's
cost, :meth:`mesh_agent.link.stretch.HelloStretch.set_floor` for the hello
interval, :meth:`mesh_agent.topology.core.TopologyCore.neighbor_up` for a
database resync). Every action has an expiry: whatever happens to the
incident, an action is undone by then.

Link quarantine is damped in the manner of RFC 2439 (BGP route flap
damping, sections 4.2 and 4.4): each time a link is found bad it earns a
*penalty* (the figure of merit); the penalty decays exponentially with a
half-life; the link is *suppressed* (its cost raised) when the penalty
reaches the suppress limit and *reused* (released) only when it has decayed
below the reuse limit, which is lower: that gap is the hysteresis, so a
link hovering at its threshold is not raised and released on every sample.
The penalty has a ceiling, which bounds how long a link that has become
good stays quarantined (RFC 2439's maximum suppress time):
``half_life * log2(ceiling / reuse)``.

A flapping link's hold-down (``hold_down_link``: the link sensor ends its session
now and brings none up until the hold ends, :meth:`LinkSensor.set_hold`) is damped
the same way, with its own figure of merit per link, a longer half-life and a
longer maximum (:data:`HOLD_HALF_LIFE_S`, :data:`HOLD_MAX_S`): each confirmed
flapping incident, each further failure of the link, and each sample in which the
held link's hellos still read lossy adds a penalty, and the hold is lifted once it
has decayed below the reuse limit, so a link that goes on flapping after a hold
is held longer the next time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh_agent.mapek.lease import Fence
from mesh_agent.mapek.monitor import Target
from mesh_agent.mapek.plan import DISRUPTIVE, ActionKind

# Damping (RFC 2439 defaults scaled from BGP's minutes to a mesh's seconds).
PENALTY_PER_HIT = 1000.0
SUPPRESS_LIMIT = 1000.0  # the first confirmed incident quarantines at once
REUSE_LIMIT = 500.0
HALF_LIFE_S = 15.0
MAX_HOLD_S = 60.0  # a good link is released at most this long after its last hit
CEILING = REUSE_LIMIT * 2 ** (MAX_HOLD_S / HALF_LIFE_S)
# The hold-down's damping: released 30 s after the last hit at first, at most HOLD_MAX_S
# after it however often the link flapped.
HOLD_HALF_LIFE_S = 30.0
HOLD_MAX_S = 180.0
# Added to a quarantined link's advertised cost: well above any loss-derived
# cost (1..11), inside the advert's u16 centi-cost (655.35).
QUARANTINE_COST = 100.0
# How long actions last before they are undone whatever happens.
EXPIRY_S: Mapping[ActionKind, float] = {
    ActionKind.QUARANTINE_LINK: 600.0,
    ActionKind.LENGTHEN_HELLO: 120.0,
    ActionKind.HOLD_DOWN_LINK: 600.0,
    ActionKind.RESYNC_LSDB: 0.0,  # one-shot: nothing to undo
    ActionKind.NONE: 0.0,
    ActionKind.RESTART_UNIT: 0.0,
    ActionKind.REREQUEST_IDENTITY: 0.0,
    ActionKind.ISOLATE_ORIGIN: 600.0,
}
LENGTHEN_FACTOR = 2.0  # hello interval floor: this times the configured interval
# restart_unit restarts the allowlisted service (``mapek.restart_units``) that used the
# most CPU between the loop's last sample and the decision, if it used at least this
# share of one core: a starved node's hog, not whatever happens to be listed.
RESTART_MIN_SHARE = 0.25


def busiest_unit(before: Mapping[str, float], after: Mapping[str, float], elapsed_s: float,
                 min_share: float = RESTART_MIN_SHARE) -> tuple[str | None, str]:
    """Which allowlisted unit to restart, from two samples of each unit's CPU seconds
    *elapsed_s* apart; (None, why) when none used ``min_share`` of a core. A unit absent
    from either sample (not running) or whose counter went down (restarted in between)
    is left out."""
    if elapsed_s <= 0:
        return None, "no CPU sample to compare with yet"
    shares = {u: (after[u] - before[u]) / elapsed_s for u in sorted(after)
              if u in before and after[u] >= before[u]}
    if not shares:
        return None, "no allowlisted unit is running"
    unit = max(shares, key=lambda u: shares[u])
    if shares[unit] < min_share:
        return None, (f"no allowlisted unit used {min_share:.0%} of a core "
                      f"(busiest: {unit}, {shares[unit]:.0%})")
    return unit, f"{unit} used {shares[unit]:.0%} of a core over {elapsed_s:.1f} s"


class Damping:
    """An RFC 2439 figure of merit for one link (module docstring). Sans-I/O."""

    def __init__(self, per_hit: float = PENALTY_PER_HIT, suppress: float = SUPPRESS_LIMIT,
                 reuse: float = REUSE_LIMIT, half_life_s: float = HALF_LIFE_S,
                 ceiling: float = CEILING) -> None:
        if not 0 < reuse < suppress <= ceiling:
            raise ValueError("need 0 < reuse < suppress <= ceiling")
        self.per_hit, self.suppress, self.reuse = per_hit, suppress, reuse
        self.half_life_s, self.ceiling = half_life_s, ceiling
        self._penalty = 0.0
        self._at = 0.0
        self.suppressed = False

    def penalty(self, now: float) -> float:
        return float(self._penalty * 0.5 ** (max(0.0, now - self._at) / self.half_life_s))

    def hit(self, now: float) -> bool:
        """The link was found bad; returns whether it is suppressed now."""
        self._penalty = min(self.ceiling, self.penalty(now) + self.per_hit)
        self._at = now
        if self._penalty >= self.suppress:
            self.suppressed = True
        return self.suppressed

    def update(self, now: float) -> bool:
        """Decay to ``now``; release when below the reuse limit. Returns suppressed."""
        if self.suppressed and self.penalty(now) < self.reuse:
            self.suppressed = False
        return self.suppressed

    def release_at(self) -> float:
        """When a suppressed link with no further hits is reused."""
        if self._penalty <= self.reuse:
            return self._at
        return self._at + self.half_life_s * math.log2(self._penalty / self.reuse)


def damping_for(kind: ActionKind) -> Damping:
    """A fresh figure of merit for a damped link action: a hold-down's own figures, the
    defaults for a quarantine and an isolation (released 15 to 60 s after the last hit)."""
    if kind == ActionKind.HOLD_DOWN_LINK:
        return Damping(half_life_s=HOLD_HALF_LIFE_S,
                       ceiling=REUSE_LIMIT * 2 ** (HOLD_MAX_S / HOLD_HALF_LIFE_S))
    return Damping()


# Actions released by their damping (hysteresis), not by their incident's recovery. An
# isolation's incident recovers as soon as the neighbour's adverts are dropped unread: it
# is kept while the neighbour goes on storming (Monitor.storming), then released.
DAMPED = frozenset({ActionKind.QUARANTINE_LINK, ActionKind.HOLD_DOWN_LINK,
                    ActionKind.ISOLATE_ORIGIN})


@dataclass(frozen=True)
class Action:
    id: int
    kind: ActionKind
    target: Target
    incident_id: int
    issued_at: float
    expires_at: float
    params: Mapping[str, Any] = field(default_factory=dict)
    lease_token: int | None = None  # the fencing token of the lease it ran under

    @property
    def disruptive(self) -> bool:
        return self.kind in DISRUPTIVE

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": str(self.kind), "target": str(self.target),
                "incident": self.incident_id, "issued_at": self.issued_at,
                "expires_at": self.expires_at, "params": dict(self.params),
                "lease_token": self.lease_token}


@dataclass(frozen=True)
class Op:
    op: str  # apply | undo
    action: Action
    # undo: released | expired | recovered | superseded | sole_link | lease_lost |
    # cut_off
    reason: str = ""


class Executor:
    """Active actions, their damping and expiry; returns the ops for the shell to carry out."""

    def __init__(self, hello_interval_s: float, next_id: int = 1) -> None:
        self.hello_interval_s = hello_interval_s
        self.next_id = next_id
        self.active: dict[tuple[ActionKind, Target], Action] = {}
        # Per damped action kind and link (neighbour name).
        self.damping: dict[tuple[ActionKind, str], Damping] = {}
        # Disruptive actions carry their lease's fencing token: an older one than the
        # newest seen is refused (a holder paused past its TTL; mapek.lease).
        self.fence = Fence()

    def build(self, kind: ActionKind, target: Target, incident_id: int, now: float,
              lease_token: int | None = None) -> Action:
        params: dict[str, Any] = {}
        if kind == ActionKind.QUARANTINE_LINK:
            params = {"extra_cost": QUARANTINE_COST}
        elif kind == ActionKind.LENGTHEN_HELLO:
            params = {"floor_s": self.hello_interval_s * LENGTHEN_FACTOR}
        elif kind == ActionKind.HOLD_DOWN_LINK:
            # The sensor lifts the hold by itself then, should the undo never reach it.
            params = {"until": now + EXPIRY_S[kind]}
        action = Action(self.next_id, kind, target, incident_id, now, now + EXPIRY_S[kind],
                        params, lease_token)
        self.next_id += 1
        return action

    def start(self, action: Action, now: float) -> list[Op]:
        """Begin an action; a damped one (quarantine, hold-down) starts or renews its
        link's damping."""
        key = (action.kind, action.target)
        if action.disruptive and not self.fence.admit(action.lease_token):
            return []
        if action.kind in DAMPED:
            damp = self.damping.setdefault((action.kind, action.target.name),
                                           damping_for(action.kind))
            if not damp.hit(now) or key in self.active:
                return []  # below the suppress limit, or already in force
        elif action.kind in (ActionKind.NONE,):
            return []
        if EXPIRY_S[action.kind] <= 0:  # one-shot
            return [Op("apply", action)]
        ops: list[Op] = []
        old = self.active.get(key)
        if old is not None:
            ops.append(Op("undo", old, "superseded"))
        self.active[key] = action
        ops.append(Op("apply", action))
        return ops

    def still_bad(self, links: Iterable[str], now: float,
                  kind: ActionKind = ActionKind.QUARANTINE_LINK) -> None:
        """Links still found bad while their *kind* of damped action is in force keep its
        penalty up (a quarantine: any link signal crossing; a hold-down: it failed again
        or still reads lossy; an isolation: the neighbour still storms)."""
        for name in links:
            damp = self.damping.get((kind, name))
            if damp is not None and damp.suppressed:
                damp.hit(now)

    def lift_holds(self, names: Iterable[str]) -> list[Op]:
        """Hold-downs on links that have become the only way to their neighbour (another
        path failed meanwhile): lifted now, their damping forgotten."""
        return self.lift(ActionKind.HOLD_DOWN_LINK, names, "sole_link")

    def lift(self, kind: ActionKind, names: Iterable[str], reason: str) -> list[Op]:
        """The *kind* of damped action on these links (neighbour names) lifted now, its
        damping forgotten: what it holds back has become the only way to something."""
        ops: list[Op] = []
        for name in names:
            action = self.active.get((kind, Target("link", name)))
            if action is not None:
                ops += self.end(action, reason)
        return ops

    def end(self, action: Action, reason: str) -> list[Op]:
        """Undo an action in force now, whatever its damping says (its lease is gone, or
        what it holds back became the only way), its damping forgotten."""
        key = (action.kind, action.target)
        if self.active.get(key) != action:
            return []
        del self.active[key]
        self.damping.pop((action.kind, action.target.name), None)
        return [Op("undo", action, reason)]

    def forget(self, action: Action) -> None:
        """An action the shell could not carry out (its lease lost, its target gone):
        no longer in force, nothing to undo."""
        if self.active.get((action.kind, action.target)) == action:
            del self.active[(action.kind, action.target)]

    def recovered(self, target: Target) -> list[Op]:
        """An incident on ``target`` recovered: undo the hello floor held for it.

        A quarantine or a hold-down is not undone here: its damping releases it
        (hysteresis).
        """
        action = self.active.pop((ActionKind.LENGTHEN_HELLO, target), None)
        return [] if action is None else [Op("undo", action, "recovered")]

    def tick(self, now: float) -> list[Op]:
        ops: list[Op] = []
        for key, action in list(self.active.items()):
            kind, target = key
            if now >= action.expires_at:
                del self.active[key]
                ops.append(Op("undo", action, "expired"))
                if kind in DAMPED:
                    self.damping.pop((kind, target.name), None)
            elif kind in DAMPED:
                damp = self.damping.get((kind, target.name))
                if damp is None or not damp.update(now):
                    del self.active[key]
                    ops.append(Op("undo", action, "released"))
        for gone in [k for k, d in self.damping.items()
                     if not d.suppressed and d.penalty(now) < 1.0]:
            del self.damping[gone]  # bounded: forgotten once decayed
        return ops
