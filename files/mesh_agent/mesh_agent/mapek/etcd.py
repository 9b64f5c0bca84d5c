"""The etcd :class:`~.safety.LeaseProvider`: a thin client around the decisions of :mod:`.lease`.

It talks to etcd's v3 JSON gateway (``/v3/...``, served by every etcd member on its
client port) through ``etcd3gw``, a maintained OpenStack client for that gateway.
All the rules (the cap, the neighbourhood, the fencing token, the next slot to try,
the back-off after a lost quorum) live in :mod:`.lease` and here in
:meth:`EtcdLeases.acquire`'s few lines of sequencing; the client only posts JSON.

No quorum. A member that has lost its quorum accepts the connection but cannot
commit, so the request waits until ``timeout_s``; a member that is down refuses
it. Either way the endpoint is skipped; when none answers, :meth:`acquire` refuses
with ``no_quorum`` and stays refused for ``retry_s`` without trying again, so a
loop deciding on every incident does not wait ``timeout_s`` each time. Only local
actions run meanwhile (:class:`~.safety.Safety`).

Blocking. The calls are synchronous (``blocking = True``), so the loop never makes
them: a disruptive decision is *pending* in its step, the shell makes the call in a
worker thread and hands the answer back (:meth:`~.loop.MapeK.leased`). The event loop
(hellos every 50 ms) never waits for etcd. Local actions never touch etcd.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import etcd3gw
from etcd3gw import exceptions as etcd_exc

from mesh_agent.mapek.lease import (
    DEFAULT_CAP_PCT,
    DEFAULT_PREFIX,
    Claim,
    LeaseKeys,
    Refusal,
    Retry,
    fleet_cap,
    validated,
)
from mesh_agent.mapek.safety import Lease

log = logging.getLogger("mesh_agent.mapek")

# (fleet size, the closed 2-hop neighbourhood of this node) from the agent's topology.
Topology = Callable[[], tuple[int, frozenset[str]]]


class Unreachable(Exception):
    """No endpoint answered within its timeout."""


def parse_endpoint(endpoint: str) -> tuple[str, str, int]:
    """``http://host:port``, ``https://...`` or ``host:port`` as (protocol, host, port)."""
    url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if url.scheme not in ("http", "https") or not url.hostname or url.port is None:
        raise ValueError(f"{endpoint!r} is not [http[s]://]HOST:PORT")
    return url.scheme, url.hostname, url.port


class EtcdLeases:
    """Leases in etcd: TTL, the fleet-wide cap, one per 2-hop neighbourhood, fencing tokens."""

    name = "etcd"
    blocking = True  # every call is a request: the shell makes them off the event loop

    def __init__(self, endpoints: Sequence[str], topology: Topology, *,
                 cap_pct: float = DEFAULT_CAP_PCT, prefix: str = DEFAULT_PREFIX,
                 timeout_s: float = 1.0, retry_s: float = 10.0,
                 tls: tuple[str, str, str] | None = None) -> None:
        """``tls``: (CA, certificate, key) files for ``https`` endpoints: the etcd role
        requires a client certificate from the mesh CA, and the node's own has clientAuth."""
        if not endpoints:
            raise ValueError("at least one etcd endpoint")
        ca, cert, key = tls or (None, None, None)
        # The TLS files only for https endpoints: requests insists they exist even for
        # plain http, and a node whose identity comes from SPIRE has none on disk.
        self.clients = [etcd3gw.Etcd3Client(
            host=h, port=p, protocol=proto, timeout=timeout_s, api_path="/v3/",
            ca_cert=ca if proto == "https" else None,
            cert_cert=cert if proto == "https" else None,
            cert_key=key if proto == "https" else None)
            for proto, h, p in map(parse_endpoint, endpoints)]
        for client in self.clients:
            # Nothing from the environment: requests lets REQUESTS_CA_BUNDLE (or
            # CURL_CA_BUNDLE) replace the CA given here, and *_proxy send the members'
            # traffic through a proxy. The members are on the mesh, checked against
            # their own CA: `meshctl lease check` from an operator's shell must reach
            # them as the agent's unit does.
            client.session.trust_env = False
        self.topology, self.cap_pct = topology, cap_pct
        self.keys = LeaseKeys(prefix)
        self.retry_s = retry_s
        self._down_until = -math.inf
        self._at = 0  # the endpoint that answered last: tried first
        # The shell calls from worker threads; one call at a time shares the sessions
        # and the back-off safely (calls are rare: rate-limited disruptive decisions).
        self._lock = threading.Lock()

    # -- I/O: one JSON post, to the first endpoint that answers ------------------------
    def _post(self, path: str, body: dict[str, Any]) -> Any:
        errors = []
        n = len(self.clients)
        for k in range(n):
            i = (self._at + k) % n
            client = self.clients[i]
            try:
                answer = client.post(client.get_url(path), json=body)
            except (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError) as exc:
                errors.append(f"{client.host}:{client.port}: {type(exc).__name__}")
                continue
            except OSError as exc:  # requests: a TLS file missing or unreadable
                errors.append(f"{client.host}:{client.port}: {exc}")
                continue
            self._at = i
            return answer
        raise Unreachable("; ".join(errors))

    # -- the LeaseProvider protocol ----------------------------------------------------
    def acquire(self, holder: str, action: str, ttl_s: float, now: float) -> Lease | Refusal:
        with self._lock:
            return self._acquire(holder, action, ttl_s, now)

    def _acquire(self, holder: str, action: str, ttl_s: float, now: float) -> Lease | Refusal:
        if now < self._down_until:
            return Refusal("no_quorum", "backing off after an unreachable etcd")
        fleet, hood = self.topology()
        cap = fleet_cap(fleet, self.cap_pct)
        try:
            claim = self.keys.claim(holder, self.keys.first_slot(holder, cap), hood, cap)
        except ValueError as exc:
            return Refusal("neighbourhood", str(exc))
        lease_id = 0
        try:
            lease_id = int(self._post("/lease/grant", {"TTL": math.ceil(ttl_s), "ID": 0})["ID"])
            got = self._claim(claim, lease_id)
        except (Unreachable, etcd_exc.Etcd3Exception) as exc:
            self._down_until = now + self.retry_s
            log.warning("mapek: no etcd quorum for a %s lease: %s", action, exc)
            self._revoke(lease_id)
            return Refusal("no_quorum", str(exc))
        if isinstance(got, Refusal):
            self._revoke(lease_id)
            return got
        log.info("mapek: lease for %s granted, token %d (slot %d of %d)",
                 action, got, claim.slot, cap)
        return Lease(got, holder, now + ttl_s, lease_id)

    def _claim(self, claim: Claim, lease_id: int) -> int | Refusal:
        for _ in range(claim.cap + 1):
            decision = self.keys.decide(claim, self._post("/kv/txn",
                                                          self.keys.grant_txn(claim, lease_id)))
            if not isinstance(decision, Retry):
                return decision
            claim = Claim(claim.node, decision.slot, claim.neighbourhood, claim.cap)
        return Refusal("contention", f"no free slot after {claim.cap + 1} tries")

    def release(self, lease: Lease) -> None:
        with self._lock:
            self._revoke(lease.lease_id)

    def validate(self, lease: Lease, now: float) -> bool:
        """Whether ``lease`` still stands: before its deadline and still the holder in etcd."""
        if now >= lease.expires_at:
            return False
        with self._lock:
            return self._still_held(lease)

    def renew(self, lease: Lease, ttl_s: float, now: float) -> Lease | None:
        """A keep-alive on the lease (an action that lasts keeps its slot): its TTL
        starts again; None when etcd no longer has it (a TTL of 0 or an error naming it),
        the same lease when no endpoint answered (it may still stand until its deadline)."""
        with self._lock:
            try:
                answer = self._post("/lease/keepalive", {"ID": lease.lease_id})
            except (Unreachable, etcd_exc.Etcd3Exception) as exc:
                log.info("mapek: lease %d not renewed (%s); asking again", lease.lease_id, exc)
                return lease
        ttl = int((answer.get("result") or {}).get("TTL") or 0)
        if ttl <= 0:
            log.warning("mapek: lease %d is gone (%s)", lease.lease_id,
                        answer.get("error") or "TTL 0")
            return None
        return Lease(lease.token, lease.holder, now + min(ttl_s, ttl), lease.lease_id)

    def _still_held(self, lease: Lease) -> bool:
        try:
            return validated(self._post("/kv/txn",
                                        self.keys.validate_txn(lease.holder, lease.token)))
        except (Unreachable, etcd_exc.Etcd3Exception):
            return False

    def _revoke(self, lease_id: int) -> None:
        if not lease_id:
            return
        try:
            self._post("/kv/lease/revoke", {"ID": lease_id})
        except (Unreachable, etcd_exc.Etcd3Exception) as exc:  # its TTL frees it anyway
            log.info("mapek: lease %d not revoked (%s); it expires with its TTL", lease_id, exc)
