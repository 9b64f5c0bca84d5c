"""Safety: what may run, decided before anything runs (sans-I/O).

- ``mapek.mode: observe`` runs nothing: every decision is recorded with the
  outcome ``observed`` (what it would have done).
- Local actions (a link's cost, the hello timing, a resync) are rate-limited
  per node by a token bucket (:class:`RateLimit`).
- Disruptive actions (:data:`mesh_agent.mapek.plan.DISRUPTIVE`: anything that
  changes another node's routing or stops a unit) need a :class:`Lease` from a
  :class:`LeaseProvider`. A lease has a TTL and a fencing token (for etcd, the
  lease's revision) that the action carries, so a holder paused past its TTL
  is refused by whatever checks the token (:class:`.lease.Fence`, in the
  executor). Providers: :class:`NoQuorum` (no lease service configured or
  reachable: it refuses every lease, so only local actions run) and
  :class:`.etcd.EtcdLeases` (the fleet-wide cap, one holder per 2-hop
  neighbourhood; :mod:`.lease` has the rules). A refusal says why
  (:data:`.lease.REFUSALS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mesh_agent.mapek.lease import Refusal
from mesh_agent.mapek.plan import DISRUPTIVE, ActionKind

# Local actions: at most a burst of 5, then one per 30 s on average.
LOCAL_RATE_PER_S = 1.0 / 30.0
LOCAL_BURST = 5.0
LEASE_TTL_S = 30.0


@dataclass(frozen=True)
class Lease:
    token: int  # fencing token: strictly increasing per grant
    holder: str
    expires_at: float  # the holder's clock at the request plus the TTL: errs early
    lease_id: int = 0  # the provider's handle (etcd's lease ID)


class LeaseProvider(Protocol):
    """``blocking``: its calls do I/O (etcd), so the loop does not make them itself: it
    asks for a lease in its :class:`~.loop.Step` and takes the answer later
    (:meth:`~.loop.MapeK.leased`); the shell makes the call off the event loop.

    ``renew`` keeps the lease of an action that lasts (an isolation) for as long as it
    lasts: the lease with its new deadline (the clock at the request plus the TTL), the
    same lease when the provider could not be asked (try again before its deadline), or
    None when it is gone for sure (expired, revoked or taken over: undo the action)."""

    name: str
    blocking: bool

    def acquire(self, holder: str, action: str, ttl_s: float, now: float) -> Lease | Refusal: ...

    def release(self, lease: Lease) -> None: ...

    def validate(self, lease: Lease, now: float) -> bool: ...

    def renew(self, lease: Lease, ttl_s: float, now: float) -> Lease | None: ...


class NoQuorum:
    """No lease service reachable: every disruptive action is refused."""

    name = "no_quorum"
    blocking = False

    def acquire(self, holder: str, action: str, ttl_s: float, now: float) -> Lease | Refusal:
        return Refusal("no_quorum", "no lease service configured")

    def release(self, lease: Lease) -> None:
        return None

    def validate(self, lease: Lease, now: float) -> bool:
        return False

    def renew(self, lease: Lease, ttl_s: float, now: float) -> Lease | None:
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
    # applied | observed | refused:rate_limited | refused:no_lease | noop | pending:lease
    outcome: str
    lease: Lease | None = None
    reason: str = ""  # a refused lease: why (lease.REFUSALS), with its detail


class Safety:
    def __init__(self, node: str, mode: str, leases: LeaseProvider | None = None,
                 limit: RateLimit | None = None, lease_ttl_s: float = LEASE_TTL_S) -> None:
        if mode not in ("observe", "enforce"):
            raise ValueError(f"mode must be observe or enforce, not {mode!r}")
        self.node, self.mode = node, mode
        self.leases: LeaseProvider = leases or NoQuorum()
        self.limit = limit or RateLimit()
        self.lease_ttl_s = lease_ttl_s

    def check(self, kind: ActionKind, now: float) -> Verdict:
        if kind == ActionKind.NONE:
            return Verdict(True, "noop")
        if self.mode == "observe":
            return Verdict(False, "observed")
        if kind in DISRUPTIVE:
            if self.leases.blocking:  # rate-limited first: no request the limit would waste
                if not self.limit.admit(now):
                    return Verdict(False, "refused:rate_limited")
                return Verdict(False, "pending:lease")
            lease = self.leases.acquire(self.node, str(kind), self.lease_ttl_s, now)
            if isinstance(lease, Refusal):
                return self.settle(lease)
            if not self.limit.admit(now):
                self.leases.release(lease)
                return Verdict(False, "refused:rate_limited")
            return Verdict(True, "applied", lease)
        if not self.limit.admit(now):
            return Verdict(False, "refused:rate_limited")
        return Verdict(True, "applied")

    @staticmethod
    def settle(answer: Lease | Refusal) -> Verdict:
        """A lease provider's answer as a verdict (a refusal keeps its reason)."""
        if isinstance(answer, Refusal):
            reason = f"{answer.reason}: {answer.detail}" if answer.detail else answer.reason
            return Verdict(False, "refused:no_lease", reason=reason)
        return Verdict(True, "applied", answer)
