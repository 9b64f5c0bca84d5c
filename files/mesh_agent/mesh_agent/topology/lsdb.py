"""Sans-I/O link-state database with signed adverts (OSPF-like flooding, RFC 2328 s13).

The database accepts an advert only when all of these hold, else it counts
the first failed reason and changes nothing. The cheap checks come first, so a
forged or replayed advert costs a few dictionary lookups, and a signature is
checked only for an advert that would change something:

* it arrived with TTL 255 when the caller knows the TTL (``ttl``, GTSM: RFC 5082);
* it parses (``malformed``) and carries a signature (``unsigned``);
* a byte-identical copy (any age) of the stored advert is the normal echo of
  flooding: counted as a duplicate, not a rejection, no cryptography;
* its seq is in 1 .. :data:`MAX_SEQ` (``bad_seq``) and its node address is a
  unicast node address (``bad_address``, :mod:`mesh_agent.addressing`);
* it is younger than ``max_age_s`` (``stale``; the age is the sender's view,
  RFC 2328 LS age, never a wall clock);
* its seq is newer than the stored one for that origin, or than our own for
  our own name (``replayed``);
* the same bytes did not already fail the checks below (remembered, bounded);
* the source is within its signature-check budget (``rate_limited``: a token
  bucket per source and one for all sources);
* the carried certificate was issued by our CA, is valid (when the clock is
  trusted), and its SPIFFE URI SAN names the origin (``untrusted``);
* the certificate names the advertised node address (``address_not_bound``);
* the signature verifies under that certificate's key (``bad_signature``).

Anything else that goes wrong while handling the bytes is counted as
``internal_error``; :meth:`LinkStateDB.receive` never raises.

Sequence numbers (RFC 2328 s12.1.6). Our own seq starts where the last run
stopped: the database reserves blocks of :data:`SEQ_BLOCK` numbers in a
:class:`SeqStore` (a small file under the agent's state_dir) *before* it signs
with them, so a crash never reuses one. If our own advert from an earlier life
comes back with a higher seq, we continue after it. Seqs above ``MAX_SEQ``
(2**63 - 1) are never signed and are refused, so a replayed or forged
maximum can neither be stored nor make us jump past the end. If our seq does
reach ``MAX_SEQ`` (only through an advert we signed with it), the next
origination *wraps*: our ``MAX_SEQ`` instance is flushed (re-flooded with the
maximum age; only a ``MAX_SEQ`` advert can be flushed this way), after which
every node lets any seq replace it, and numbering restarts at
:data:`INITIAL_SEQ`. Unlike OSPF's flush the instance stays in the graph until
it is replaced (or ages out), so a wrap moves no route.

Ageing is by the receiver's own monotonic clock: an entry is dropped when it
is older than ``max_age_s`` counted from the origin's send (the age it came
with plus our own time holding it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Protocol

import networkx as nx
from cryptography.hazmat.primitives.asymmetric import ec

from mesh_agent.addressing import unusable_reason
from mesh_agent.identity import IdentityError, Peer
from mesh_agent.link.wire import WireError
from mesh_agent.topology.wire import (
    MAX_AGE_MS,
    Advert,
    decode_advert,
    encode_unsigned,
    signature_trailer,
    with_age,
)

log = logging.getLogger("mesh_agent.topology")

REJECT_REASONS = (
    "malformed",
    "unsigned",
    "bad_signature",
    "untrusted",
    "replayed",
    "stale",
    "ttl",
    "bad_seq",
    "bad_address",
    "address_not_bound",
    "rate_limited",
    "internal_error",
)
INITIAL_SEQ = 1
MAX_SEQ = 2**63 - 1
SEQ_BLOCK = 1000
GTSM_TTL = 255
# Signature checks per source (the neighbour that sent the datagram): a
# neighbour forwards every origin's refresh, about N / advert_interval_s a
# second, and a new neighbour's database exchange is one burst of N.
VERIFY_RATE = 200.0
VERIFY_BURST = 500.0
# All sources together.
VERIFY_RATE_ALL = 500.0
VERIFY_BURST_ALL = 1000.0
MAX_SOURCES = 256
BAD_CACHE_MAX = 1024
# RFC 2328 MinLSArrival: at most one send-back per origin and second.
SEND_BACK_INTERVAL_S = 1.0


class Verifier(Protocol):
    node_name: str
    cert_der: bytes

    def sign(self, data: bytes) -> bytes: ...

    def verify_cert(self, cert_der: bytes, origin: str) -> Peer: ...

    @staticmethod
    def verify_signature(pub: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool: ...


class SeqStore(Protocol):
    """Where our own sequence-number reservation survives restarts."""

    def load(self) -> int: ...

    def save(self, reserved: int) -> None: ...


class MemorySeqStore:
    """A :class:`SeqStore` that forgets at exit (tests, or no writable state_dir)."""

    def __init__(self, reserved: int = 0) -> None:
        self.reserved = reserved
        self.saves = 0

    def load(self) -> int:
        return self.reserved

    def save(self, reserved: int) -> None:
        self.reserved = reserved
        self.saves += 1


@dataclass(frozen=True)
class Entry:
    advert: Advert
    raw: bytes  # canonical bytes (age 0)
    received_at: float  # our monotonic clock
    born: float  # our estimate of when the origin sent it: received_at - its age
    # The origin wrapped its sequence (this MAX_SEQ instance was flushed): any
    # seq replaces it. Its links stay in the graph until then, so a wrap moves
    # no route.
    flushed: bool = False


@dataclass(frozen=True)
class Result:
    accepted: bool
    reason: str | None = None  # a REJECT_REASONS member, "duplicate" or "flushed"
    origin: str | None = None
    topology_changed: bool = False
    # Our newer copy of this origin's advert, to send back to whoever sent an
    # older one (RFC 2328 s13 step 8): how a node that lost its state, or the
    # origin of a replayed maximum, learns the seq it must go past.
    reply: bytes | None = None
    # Our own advert came back newer than ours (RFC 2328 s13.4): originate now,
    # past it (or wrap, when it holds MAX_SEQ).
    reoriginate: bool = False
    # Of an accepted advert from another node: whether it lists us as a
    # neighbour. A neighbour whose fresh advert dropped us has lost the link
    # (back-link detection): it often knows before our own timer fires.
    lists_us: bool | None = None
    # Of an accepted advert that replaced an older one: the neighbours the
    # origin listed before and lists no more (their links left the graph).
    removed: tuple[str, ...] = ()


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at

    def take(self, now: float, rate: float, burst: float) -> bool:
        self.tokens = min(burst, self.tokens + max(0.0, now - self.at) * rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class LinkStateDB:
    def __init__(
        self,
        identity: Verifier,
        node_address: str,
        max_age_s: float,
        seq_store: SeqStore | None = None,
    ) -> None:
        self.identity = identity
        self.node_name = identity.node_name
        self.node_address = node_address
        self.max_age_s = max_age_s
        self._store: SeqStore = seq_store if seq_store is not None else MemorySeqStore()
        try:
            reserved = int(self._store.load())
        except (OSError, ValueError) as exc:
            log.warning("sequence number store unreadable (%s): starting at %d", exc, INITIAL_SEQ)
            reserved = 0
        # The next origination uses _seq + 1; everything up to _reserved may have been used.
        self._seq = max(0, min(reserved, MAX_SEQ))
        self._reserved = self._seq
        self._db: dict[str, Entry] = {}
        self.rejected: Counter[str] = Counter({r: 0 for r in REJECT_REASONS})
        self.accepted_total = 0
        self.duplicate_total = 0
        self.rx_total = 0
        self.wraps_total = 0
        self._flush: tuple[bytes, float] | None = None  # (our MAX_SEQ advert, flood until)
        self._own_max: bytes | None = None  # our MAX_SEQ advert, as it came back to us
        self._bad: OrderedDict[bytes, str] = OrderedDict()
        self._buckets: dict[str, _Bucket] = {}
        self._all = _Bucket(VERIFY_BURST_ALL, 0.0)
        self._errors_logged: set[str] = set()
        self._sent_back: dict[str, float] = {}

    # -- origination ------------------------------------------------------
    def originate(self, links: dict[str, float], now: float) -> tuple[bytes, bool]:
        """Sign a fresh advert of our links; return (bytes, topology_changed).

        *now* is our monotonic clock.
        """
        if self._seq >= MAX_SEQ:
            self._wrap(now)
        seq = self._seq + 1
        if seq > self._reserved:
            self._reserve(seq)
        self._seq = seq
        body = encode_unsigned(
            self.node_name,
            self.node_address,
            seq,
            tuple(sorted(links.items())),
            self.identity.cert_der,
        )
        raw = body + signature_trailer(self.identity.sign(body))
        advert = decode_advert(raw)
        old = self._db.get(self.node_name)
        self._db[self.node_name] = Entry(advert, raw, now, now)
        return raw, old is None or _topo_key(old.advert) != _topo_key(advert)

    def _reserve(self, seq: int) -> None:
        """Persist a reservation covering *seq* before anything is signed with it."""
        self._reserved = min(MAX_SEQ, seq + SEQ_BLOCK - 1)
        try:
            self._store.save(self._reserved)
        except OSError as exc:  # a read-only or full disk must not stop the mesh
            log.warning("cannot persist the sequence number reservation: %s", exc)

    def _wrap(self, now: float) -> None:
        """RFC 2328 s12.1.6: flush our MAX_SEQ instance, restart at INITIAL_SEQ."""
        own = self._db.get(self.node_name)
        if own is not None and own.advert.seq == MAX_SEQ:
            self._own_max = own.raw
        if self._own_max is not None:
            self._flush = (self._own_max, now + self.max_age_s)
            self._own_max = None
        self.wraps_total += 1
        log.warning(
            "own sequence number reached %d: flushing it and restarting at %d",
            MAX_SEQ,
            INITIAL_SEQ,
        )
        self._seq = INITIAL_SEQ - 1
        self._reserved = self._seq
        self._db.pop(self.node_name, None)

    def flushes(self, now: float) -> list[bytes]:
        """Our MAX_SEQ advert at the maximum age, to flood while a wrap is in progress."""
        if self._flush is None:
            return []
        raw, until = self._flush
        if now > until:
            self._flush = None
            return []
        return [with_age(raw, MAX_AGE_MS)]  # beyond any node's advert_max_age_s

    # -- reception --------------------------------------------------------
    def receive(
        self, data: bytes, now: float, source: str | None = None, ttl: int | None = None
    ) -> Result:
        """Validate and store one advert (*now*: our monotonic clock). Never raises.

        *source* names the sender (interface and link address) for the
        per-source signature budget; *ttl* is the IP TTL it arrived with.
        """
        self.rx_total += 1
        try:
            return self._receive(bytes(data), now, source, ttl)
        except Exception as exc:  # a bug must cost one advert, never the caller's timer
            kind = type(exc).__name__
            if kind not in self._errors_logged:
                self._errors_logged.add(kind)
                log.exception("advert handling failed (%s); counted as internal_error", kind)
            return self._reject("internal_error")

    def _receive(self, data: bytes, now: float, source: str | None, ttl: int | None) -> Result:
        if ttl is not None and ttl != GTSM_TTL:
            return self._reject("ttl")
        try:
            advert = decode_advert(data)
        except WireError:
            return self._reject("malformed")
        origin = advert.origin
        canonical = advert.canonical
        stored = self._db.get(origin)
        age_s = advert.age_ms / 1000.0
        if stored is not None and stored.raw == canonical:
            if (
                advert.seq == MAX_SEQ
                and age_s >= self.max_age_s
                and origin != self.node_name
                and not stored.flushed
            ):
                # The origin's sequence wrap (RFC 2328 s12.1.6): its next seq,
                # from 1, replaces this instance. Flooded on, once.
                self._db[origin] = dataclasses.replace(stored, flushed=True)
                return Result(True, "flushed", origin, False)
            self.duplicate_total += 1
            return Result(False, "duplicate", origin)
        if not advert.signature:
            return self._reject("unsigned", origin)
        if not INITIAL_SEQ <= advert.seq <= MAX_SEQ:
            return self._reject("bad_seq", origin)
        if unusable_reason(ipaddress.IPv4Address(advert.node_address)) is not None:
            return self._reject("bad_address", origin)
        if age_s >= self.max_age_s:
            return self._reject("stale", origin)
        if origin == self.node_name:
            if advert.seq <= self._seq:
                return self._reject("replayed", origin)
        elif stored is not None and not stored.flushed and advert.seq <= stored.advert.seq:
            result = self._reject("replayed", origin)
            if advert.seq < stored.advert.seq:
                last = self._sent_back.get(origin)
                if last is None or now - last >= SEND_BACK_INTERVAL_S:
                    if len(self._sent_back) > 4 * len(self._db) + 64:
                        self._sent_back.clear()
                    self._sent_back[origin] = now
                    reply = with_age(stored.raw, (now - stored.born) * 1000)
                    return dataclasses.replace(result, reply=reply)
            return result
        digest = hashlib.sha256(canonical).digest()
        known_bad = self._bad.get(digest)
        if known_bad is not None:
            return self._reject(known_bad, origin)
        if not self._budget(source, now):
            return self._reject("rate_limited", origin)
        reason = self._verify(advert)
        if reason is not None:
            self._bad[digest] = reason
            if len(self._bad) > BAD_CACHE_MAX:
                self._bad.popitem(last=False)
            return self._reject(reason, origin)
        if origin == self.node_name:
            # Our own advert from an earlier life (or signed with our key):
            # continue after it; never store it.
            self._seq = advert.seq
            if advert.seq == MAX_SEQ:
                self._own_max = canonical  # flushed by the next origination's wrap
            elif self._seq >= self._reserved:
                self._reserve(self._seq + 1)
            return dataclasses.replace(self._reject("replayed", origin), reoriginate=True)
        self._db[origin] = Entry(advert, canonical, now, now - age_s)
        self.accepted_total += 1
        changed = stored is None or _topo_key(stored.advert) != _topo_key(advert)
        lists_us = any(name == self.node_name for name, _ in advert.links)
        removed: tuple[str, ...] = ()
        if changed and stored is not None:
            now_listed = {name for name, _ in advert.links}
            removed = tuple(sorted({n for n, _ in stored.advert.links} - now_listed))
        return Result(True, None, origin, changed, lists_us=lists_us, removed=removed)

    def _verify(self, advert: Advert) -> str | None:
        """The expensive checks; the failed reason or None."""
        try:
            peer = self.identity.verify_cert(advert.cert_der, advert.origin)
        except IdentityError:
            return "untrusted"
        if advert.node_address not in peer.addresses:
            return "address_not_bound"
        if not self.identity.verify_signature(
            peer.public_key, advert.signature, advert.signed_part
        ):
            return "bad_signature"
        return None

    def _budget(self, source: str | None, now: float) -> bool:
        if source is not None:
            bucket = self._buckets.get(source)
            if bucket is None:
                if len(self._buckets) >= MAX_SOURCES:
                    # Forget the sources whose budget has refilled (idle ones).
                    self._buckets = {
                        k: b
                        for k, b in self._buckets.items()
                        if b.tokens + (now - b.at) * VERIFY_RATE < VERIFY_BURST
                    }
                bucket = _Bucket(VERIFY_BURST, now)
                if len(self._buckets) < MAX_SOURCES:
                    self._buckets[source] = bucket
            if not bucket.take(now, VERIFY_RATE, VERIFY_BURST):
                return False
        return self._all.take(now, VERIFY_RATE_ALL, VERIFY_BURST_ALL)

    def _reject(self, reason: str, origin: str | None = None) -> Result:
        self.rejected[reason] += 1
        return Result(False, reason, origin)

    def expire(self, now: float) -> list[str]:
        """Drop adverts older than max_age_s on our clock (their origin stopped refreshing)."""
        gone = [
            o
            for o, e in self._db.items()
            if o != self.node_name and now - e.born > self.max_age_s
        ]
        for origin in gone:
            del self._db[origin]
        return gone

    # -- views ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._db)

    @property
    def seq(self) -> int:
        """The seq of our latest advert (0 before the first)."""
        return self._seq

    def has_own(self) -> bool:
        return self.node_name in self._db

    def entries(self) -> dict[str, Entry]:
        return dict(self._db)

    def age(self, origin: str, now: float) -> float | None:
        e = self._db.get(origin)
        return None if e is None else now - e.born

    def cert_of(self, origin: str) -> bytes | None:
        """The certificate *origin*'s stored (verified) advert carries."""
        e = self._db.get(origin)
        return None if e is None else e.advert.cert_der

    def own_advert(self, now: float) -> bytes | None:
        e = self._db.get(self.node_name)
        return None if e is None else with_age(e.raw, (now - e.born) * 1000)

    def raw_adverts(self, now: float) -> list[bytes]:
        """Every stored advert with its current age (database exchange, RFC 2328 s10.6)."""
        return [with_age(e.raw, (now - e.born) * 1000) for e in self._db.values()]

    def links_of(self, origin: str) -> dict[str, float] | None:
        """The links *origin* advertises now, or None when it has no advert here."""
        e = self._db.get(origin)
        return None if e is None else dict(e.advert.links)

    def addresses(self) -> dict[str, str]:
        return {o: e.advert.node_address for o, e in self._db.items()}

    def graph(self) -> nx.Graph:
        """Undirected graph; an edge exists only if both ends advertise it.

        Cost is the larger of the two advertised costs (the worse direction
        decides, since a link is only as good as its lossier way).
        """
        g = nx.Graph()
        for origin, e in self._db.items():
            g.add_node(origin, address=e.advert.node_address)
        for origin, e in self._db.items():
            mine = dict(e.advert.links)
            for nbr, cost in mine.items():
                other = self._db.get(nbr)
                if other is None or origin >= nbr:
                    continue
                back = dict(other.advert.links).get(origin)
                if back is not None:
                    g.add_edge(origin, nbr, cost=max(cost, back))
        return g


def _topo_key(a: Advert) -> tuple[str, tuple[tuple[str, float], ...]]:
    return a.node_address, tuple(sorted(a.links))
