"""Leases for disruptive actions: the fleet-wide cap, the neighbourhood rule and fencing (sans-I/O).

This module decides; :mod:`.etcd` only carries its requests to etcd's v3 JSON gateway
and its answers back. Nothing here performs I/O or reads a clock.

**Keys** (under a prefix, ``/meshcore/mapek/`` by default), all attached to the
holder's etcd lease, so they vanish when it expires (the kured #137 lesson: a dead
holder blocks nobody longer than the TTL):

- ``slot/<i>`` for ``i < cap(fleet)``: at most :func:`fleet_cap` disruptive leases at
  once, ``max(1, ceil(cap_pct % x fleet))``; the value is the holder's name;
- ``holder/<node>``: who holds one now; the value is the slot.

**Grant.** One transaction, atomic in etcd (serialisable, like every txn): *if* the
chosen slot is absent (``create_revision == 0``) *and* no node in the requester's
closed 2-hop neighbourhood (itself, its neighbours and theirs, from its own LSDB)
holds a lease, *then* put both keys on the lease; *else* read back the ``slot/`` and
``holder/`` prefixes, so the refusal names its reason (``neighbourhood``, or
``fleet_cap`` when every slot is taken) or the answer picks a free slot for the next
try. So no two holders are within 2 hops of each other as long as their views of the
topology agree (they converge within one flooding time).

**Fencing token.** The revision of the granting transaction, which is the holder
key's ``create_revision``: etcd's revision only grows, so a later grant always has a
larger token. Every disruptive :class:`~.execute.Action` carries it, and
:class:`Fence` (in the executor, and in whatever receives the action) refuses a
token older than the newest it has seen: a holder that was paused past its TTL and
woke up cannot act on the stale lease once anyone else has been granted since.
Before acting, a holder also checks its own deadline (its clock at the request plus
the TTL, so it errs early) and can ask etcd whether ``holder/<node>`` still has its
token (:meth:`LeaseKeys.validate_txn`).

Example::

    >>> fleet_cap(50, 5.0), fleet_cap(10, 5.0), fleet_cap(100, 5.0)
    (3, 1, 5)
    >>> f = Fence()
    >>> f.admit(7), f.admit(5), f.admit(9)
    (True, False, True)
"""

from __future__ import annotations

import base64
import math
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import networkx as nx

DEFAULT_PREFIX = "/meshcore/mapek/"
DEFAULT_CAP_PCT = 5.0
# Why a lease was refused: a closed set (it reaches the log and the verdict).
REFUSALS = ("no_quorum", "fleet_cap", "neighbourhood", "contention")
# etcd's default --max-txn-ops is 128: the compares are one per neighbour plus the slot.
MAX_NEIGHBOURHOOD = 120


def fleet_cap(fleet: int, cap_pct: float) -> int:
    """At most this many disruptive leases at once: ``max(1, ceil(cap_pct % x fleet))``."""
    if fleet < 1 or not 0 < cap_pct <= 100:
        raise ValueError("fleet must be >= 1 and cap_pct in (0, 100]")
    # round() first: 5 % of 20 is 1.0000000000000002 in floating point, not 2.
    return max(1, math.ceil(round(cap_pct * fleet / 100.0, 9)))


@dataclass(frozen=True)
class Refusal:
    reason: str  # one of REFUSALS
    detail: str = ""

    def __post_init__(self) -> None:
        if self.reason not in REFUSALS:
            raise ValueError(f"unknown refusal {self.reason!r}")


class Fence:
    """The newest fencing token seen; an older one is refused (equal is the same lease)."""

    def __init__(self) -> None:
        self.newest = 0

    def admit(self, token: int | None) -> bool:
        if token is None or token < self.newest:
            return False
        self.newest = token
        return True


def neighbourhood(graph: nx.Graph, node: str, hops: int = 2) -> tuple[int, frozenset[str]]:
    """The fleet's size and ``node``'s closed ``hops``-hop neighbourhood in the LSDB's graph.

    Hops, not costs: the rule is about who is near, whatever the links cost.
    A node not yet in its own graph (at start) is a fleet of at least one, alone.
    """
    if node not in graph:
        return max(1, graph.number_of_nodes()), frozenset({node})
    near = nx.single_source_shortest_path_length(graph, node, cutoff=hops)
    return graph.number_of_nodes(), frozenset(near)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def prefix_end(prefix: str) -> str:
    """etcd's range end for every key starting with ``prefix`` (last byte plus one)."""
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


@dataclass(frozen=True)
class Retry:
    slot: int  # a slot that was free in the answer


@dataclass(frozen=True)
class Claim:
    """What one grant attempt asks for."""

    node: str
    slot: int
    neighbourhood: frozenset[str]  # the closed 2-hop neighbourhood (includes node)
    cap: int


class LeaseKeys:
    """Key names and transaction bodies (etcd v3 JSON gateway: keys base64, int64 as strings)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"

    def slot(self, i: int) -> str:
        return f"{self.prefix}slot/{i}"

    def holder(self, node: str) -> str:
        return f"{self.prefix}holder/{node}"

    def first_slot(self, node: str, cap: int) -> int:
        """Where a node tries first: spread by its name, so nodes rarely race for one key."""
        return zlib.crc32(node.encode()) % cap

    def claim(self, node: str, slot: int, neighbourhood: Iterable[str], cap: int) -> Claim:
        hood = frozenset(neighbourhood) | {node}
        if len(hood) > MAX_NEIGHBOURHOOD:
            raise ValueError(f"a neighbourhood of {len(hood)} nodes exceeds etcd's txn size")
        if not 0 <= slot < cap:
            raise ValueError("slot outside the cap")
        return Claim(node, slot, hood, cap)

    def grant_txn(self, claim: Claim, lease_id: int) -> dict[str, Any]:
        absent = [{"key": b64(self.slot(claim.slot)), "target": "CREATE", "result": "EQUAL",
                   "create_revision": "0"}]
        absent += [{"key": b64(self.holder(n)), "target": "CREATE", "result": "EQUAL",
                    "create_revision": "0"} for n in sorted(claim.neighbourhood)]
        lease = str(lease_id)
        return {
            "compare": absent,
            "success": [
                {"request_put": {"key": b64(self.slot(claim.slot)), "value": b64(claim.node),
                                 "lease": lease}},
                {"request_put": {"key": b64(self.holder(claim.node)),
                                 "value": b64(str(claim.slot)), "lease": lease}},
            ],
            "failure": [
                {"request_range": {"key": b64(self.prefix + "slot/"),
                                   "range_end": prefix_end(self.prefix + "slot/")}},
                {"request_range": {"key": b64(self.prefix + "holder/"),
                                   "range_end": prefix_end(self.prefix + "holder/")}},
            ],
        }

    def validate_txn(self, node: str, token: int) -> dict[str, Any]:
        """Succeeds only while ``holder/<node>`` is the key created at revision ``token``."""
        return {"compare": [{"key": b64(self.holder(node)), "target": "CREATE",
                             "result": "EQUAL", "create_revision": str(token)}],
                "success": [], "failure": []}

    def decide(self, claim: Claim, answer: Mapping[str, Any]) -> int | Refusal | Retry:
        """A grant transaction's answer: the fencing token, a refusal, or the next slot to try.

        Returns the token (> 0) when granted; a :class:`Refusal` when a neighbour holds a
        lease or every slot below the cap is taken; else a :class:`Retry` with a free
        slot (the one tried was taken by someone outside the neighbourhood).
        """
        if answer.get("succeeded"):
            return int(answer["header"]["revision"])
        slots: set[int] = set()
        holders: set[str] = set()
        responses = list(answer.get("responses") or [])
        for i, resp in enumerate(responses[:2]):
            for kv in (resp.get("response_range") or {}).get("kvs") or []:
                name = unb64(kv["key"]).rsplit("/", 1)[-1]
                if i == 0 and name.isdigit():
                    slots.add(int(name))
                elif i == 1:
                    holders.add(name)
        near = sorted(holders & claim.neighbourhood)
        if near:
            return Refusal("neighbourhood", ",".join(near))
        free = [s for s in range(claim.cap) if s not in slots]
        if not free:
            return Refusal("fleet_cap", f"{len(slots)} of {claim.cap} slots held")
        # Try the next free slot after the one that was taken: contenders spread.
        after = [s for s in free if s > claim.slot] or free
        return Retry(after[0])


def validated(answer: Mapping[str, Any]) -> bool:
    return bool(answer.get("succeeded"))
