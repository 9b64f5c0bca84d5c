"""Sans-I/O link-state database with signed adverts (OSPF-like flooding, RFC 2328 s13).

The database accepts an advert only when all of these hold, else it counts
the first failed reason and changes nothing:

* it parses (``malformed``) and carries a signature (``unsigned``);
* the carried certificate was issued by our CA, is valid now, and its SPIFFE
  URI SAN names the advert's origin (``untrusted``);
* the signature verifies under that certificate's key (``bad_signature``);
* it is no older than ``max_age_s`` and not from the far future (``stale``);
* its seq is newer than the stored one for that origin (``replayed``).

A byte-identical copy of the stored advert is the normal echo of flooding; it
is counted as a duplicate, not a rejection, and costs no cryptography.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import networkx as nx
from cryptography.hazmat.primitives.asymmetric import ec

from mesh_agent.identity import IdentityError
from mesh_agent.link.wire import WireError
from mesh_agent.topology.wire import Advert, decode_advert, encode_unsigned, signature_trailer

REJECT_REASONS = ("malformed", "unsigned", "bad_signature", "untrusted", "replayed", "stale")


class Verifier(Protocol):
    node_name: str
    cert_der: bytes

    def sign(self, data: bytes) -> bytes: ...

    def verify_cert(self, cert_der: bytes, origin: str) -> ec.EllipticCurvePublicKey: ...

    @staticmethod
    def verify_signature(pub: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool: ...


@dataclass(frozen=True)
class Entry:
    advert: Advert
    raw: bytes
    received_at: float  # local wall clock


@dataclass(frozen=True)
class Result:
    accepted: bool
    reason: str | None = None  # a REJECT_REASONS member, or "duplicate"
    origin: str | None = None
    topology_changed: bool = False


class LinkStateDB:
    def __init__(
        self,
        identity: Verifier,
        node_address: str,
        max_age_s: float,
        seq_start: Callable[[float], int] | None = None,
    ) -> None:
        self.identity = identity
        self.node_name = identity.node_name
        self.node_address = node_address
        self.max_age_s = max_age_s
        # Seeding seq from the wall clock in ms keeps it increasing across
        # restarts without persisting it, so peers never see our fresh
        # adverts as replays of the ones we sent before the restart.
        self._seq_start = seq_start or (lambda now: int(now * 1000))
        self._seq = 0
        self._db: dict[str, Entry] = {}
        self.rejected: Counter[str] = Counter({r: 0 for r in REJECT_REASONS})
        self.accepted_total = 0
        self.duplicate_total = 0
        self.rx_total = 0

    # -- origination ------------------------------------------------------
    def originate(self, links: dict[str, float], now: float) -> tuple[bytes, bool]:
        """Sign a fresh advert of our links; return (bytes, topology_changed)."""
        self._seq = max(self._seq + 1, self._seq_start(now))
        body = encode_unsigned(
            self.node_name,
            self.node_address,
            self._seq,
            int(now * 1000),
            tuple(sorted(links.items())),
            self.identity.cert_der,
        )
        raw = body + signature_trailer(self.identity.sign(body))
        advert = decode_advert(raw)
        old = self._db.get(self.node_name)
        self._db[self.node_name] = Entry(advert, raw, now)
        return raw, old is None or _topo_key(old.advert) != _topo_key(advert)

    # -- reception --------------------------------------------------------
    def receive(self, data: bytes, now: float) -> Result:
        """Validate and store one advert. Never raises on bad input."""
        self.rx_total += 1
        try:
            advert = decode_advert(data)
        except WireError:
            return self._reject("malformed")
        stored = self._db.get(advert.origin)
        if stored is not None and stored.raw == data:
            self.duplicate_total += 1
            return Result(False, "duplicate", advert.origin)
        if not advert.signature:
            return self._reject("unsigned", advert.origin)
        try:
            pub = self.identity.verify_cert(advert.cert_der, advert.origin)
        except IdentityError:
            return self._reject("untrusted", advert.origin)
        if not self.identity.verify_signature(pub, advert.signature, advert.signed_part):
            return self._reject("bad_signature", advert.origin)
        age = now - advert.ts_ms / 1000.0
        if age > self.max_age_s or age < -self.max_age_s:
            return self._reject("stale", advert.origin)
        if advert.origin == self.node_name:
            # Our own advert from a previous life: jump past it, never store it.
            self._seq = max(self._seq, advert.seq)
            return self._reject("replayed", advert.origin)
        if stored is not None and advert.seq <= stored.advert.seq:
            return self._reject("replayed", advert.origin)
        self._db[advert.origin] = Entry(advert, bytes(data), now)
        self.accepted_total += 1
        changed = stored is None or _topo_key(stored.advert) != _topo_key(advert)
        return Result(True, None, advert.origin, changed)

    def _reject(self, reason: str, origin: str | None = None) -> Result:
        self.rejected[reason] += 1
        return Result(False, reason, origin)

    def expire(self, now: float) -> list[str]:
        """Drop adverts older than max_age_s (their origin stopped refreshing)."""
        gone = [
            o
            for o, e in self._db.items()
            if o != self.node_name and now - e.advert.ts_ms / 1000.0 > self.max_age_s
        ]
        for origin in gone:
            del self._db[origin]
        return gone

    # -- views ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._db)

    def has_own(self) -> bool:
        return self.node_name in self._db

    def entries(self) -> dict[str, Entry]:
        return dict(self._db)

    def raw_adverts(self) -> list[bytes]:
        return [e.raw for e in self._db.values()]

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
