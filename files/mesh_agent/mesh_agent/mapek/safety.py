"""Safety: what may run, decided before anything runs (sans-I/O).

- ``mapek.mode: observe`` runs nothing: every decision is recorded with the
  outcome ``observed`` (what it would have done).
- Local actions (a link's cost, the hello timing, a resync) are rate-limited
  per node by a token bucket (:class:`RateLimit`).
- Disruptive actions (:data:`mesh_agent.mapek.plan.DISRUPTIVE`: anything that
  changes another node's routing or stops a unit) need a :class:`Lease` from a
  :class:`LeaseProvider`. A lease has a TTL and a fencing token (for etcd, the
  lease's revision) that the action carries, so a holder paused past its TTL
  is refused by whatever checks the token. Only :class:`NoQuorum` exists
  here: it refuses every lease, so without the etcd provider (a later change)
  only local actions run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mesh_agent.mapek.plan import DISRUPTIVE, ActionKind

# Local actions: at most a burst of 5, then one per 30 s on average.
LOCAL_RATE_PER_S = 1.0 / 30.0
LOCAL_BURST = 5.0
LEASE_TTL_S = 30.0


@dataclass(frozen=True)
class Lease:
    token: int  # fencing token: strictly increasing per grant
    holder: str
    expires_at: float


class LeaseProvider(Protocol):
    name: str

    def acquire(self, holder: str, action: str, ttl_s: float, now: float) -> Lease | None: ...

    def release(self, lease: Lease) -> None: ...


class NoQuorum:
    """No lease service reachable: every disruptive action is refused."""

    name = "no_quorum"

    def acquire(self, holder: str, action: str, ttl_s: float, now: float) -> Lease | None:
        return None

    def release(self, lease: Lease) -> None:
        return None


class RateLimit:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` held."""

    def __init__(self, rate: float = LOCAL_RATE_PER_S, burst: float = LOCAL_BURST) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst = rate, burst
        self._tokens = burst
        self._at: float | None = None

    def admit(self, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = now if self._at is None else max(self._at, now)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    outcome: str  # applied | observed | refused:rate_limited | refused:no_lease | noop
    lease: Lease | None = None


class Safety:
    def __init__(self, node: str, mode: str, leases: LeaseProvider | None = None,
                 limit: RateLimit | None = None) -> None:
        if mode not in ("observe", "enforce"):
            raise ValueError(f"mode must be observe or enforce, not {mode!r}")
        self.node, self.mode = node, mode
        self.leases: LeaseProvider = leases or NoQuorum()
        self.limit = limit or RateLimit()

    def check(self, kind: ActionKind, now: float) -> Verdict:
        if kind == ActionKind.NONE:
            return Verdict(True, "noop")
        if self.mode == "observe":
            return Verdict(False, "observed")
        if kind in DISRUPTIVE:
            lease = self.leases.acquire(self.node, str(kind), LEASE_TTL_S, now)
            if lease is None:
                return Verdict(False, "refused:no_lease")
            if not self.limit.admit(now):
                self.leases.release(lease)
                return Verdict(False, "refused:rate_limited")
            return Verdict(True, "applied", lease)
        if not self.limit.admit(now):
            return Verdict(False, "refused:rate_limited")
        return Verdict(True, "applied")
