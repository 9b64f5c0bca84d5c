"""Where the node's X.509-SVID comes from, and how its rotation is followed.

Two sources give the same :class:`Material` (key, certificate, trust bundle):

* :class:`WorkloadApiSource` streams X.509 contexts from the SPIFFE Workload
  API (the SPIRE agent's socket) with the ``spiffe`` package. It is chosen when
  ``SPIFFE_ENDPOINT_SOCKET`` is set and the socket exists.
* :class:`FileSource` reads PEM files (``node.key``, ``node.crt``, ``ca.crt``)
  written by the lab PKI or by a SPIRE agent's ``svid_store``/helper. It is the
  fallback, and polls the files' inode, size and mtime for rotation.

:class:`IdentityWatcher` applies each new set with :meth:`Identity.swap`, in the
event loop's thread, in one step: adverts signed before the swap carry the old
certificate and stay valid, adverts after it carry the new one (``on_rotate``
lets the agent flood a fresh advert at once rather than at its next refresh).
Neither the LSDB nor the kernel routes are touched. A set that does not load or does not
verify (a rotation caught half-written) is retried and the old identity kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mesh_agent.config import IdentityConfig
from mesh_agent.identity import Identity, IdentityError, spiffe_id
from mesh_agent.store.events import EventKind, EventLog

log = logging.getLogger("mesh_agent.identity")

ENDPOINT_ENV = "SPIFFE_ENDPOINT_SOCKET"
# A rotation written file by file is complete well within this; only a set that
# still fails to load after it counts as an error.
SETTLE_S = 5.0


@dataclass(frozen=True)
class Material:
    """One coherent identity: signing key, its certificate, trusted authorities."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    bundle: tuple[x509.Certificate, ...]

    def fingerprint(self) -> tuple[bytes, frozenset[bytes]]:
        der = serialization.Encoding.DER
        return self.cert.public_bytes(der), frozenset(c.public_bytes(der) for c in self.bundle)


class Source(Protocol):
    name: str

    def load(self) -> Material: ...


def _ec_key(key: object, where: str) -> ec.EllipticCurvePrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise IdentityError(f"{where}: expected an EC P-256 private key")
    return key


class FileSource:
    """PEM files on disk; :meth:`stamp` changes whenever any of them is replaced."""

    name = "files"

    def __init__(self, paths: IdentityConfig) -> None:
        self.paths = paths

    def load(self) -> Material:
        p = self.paths
        try:
            key = serialization.load_pem_private_key(Path(p.key).read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(Path(p.cert).read_bytes())
            bundle = tuple(x509.load_pem_x509_certificates(Path(p.ca).read_bytes()))
        except (OSError, ValueError) as exc:
            raise IdentityError(f"cannot load {p.key}, {p.cert}, {p.ca}: {exc}") from exc
        return Material(_ec_key(key, str(p.key)), cert, bundle)

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for path in (self.paths.key, self.paths.cert, self.paths.ca):
            try:
                st = os.stat(path)
            except OSError:
                out.append((0, 0, 0))
            else:
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)


class WorkloadApiSource:
    """X.509 contexts streamed from the SPIFFE Workload API (``spiffe.X509Source``).

    The SVID named ``spiffe://<trust domain>/node/<name>`` is picked when the
    workload is given several; the bundle is that trust domain's. ``client`` is
    for tests: a stand-in for ``spiffe.WorkloadApiClient`` (the gRPC boundary).
    """

    name = "workload_api"

    def __init__(
        self,
        socket: str,
        node_name: str,
        trust_domain: str,
        timeout_s: float = 30.0,
        client: Any = None,
    ) -> None:
        # Imported here: grpc and protobuf cost memory a file-based node never needs.
        from spiffe import X509Source

        want = spiffe_id(trust_domain, node_name)

        def pick(svids: list[Any]) -> Any:
            for svid in svids:
                if str(svid.spiffe_id) == want:
                    return svid
            raise IdentityError(f"the Workload API gave no SVID for {want}")

        self.trust_domain = trust_domain
        self._callbacks: list[Callable[[], None]] = []

        def open_source() -> Any:
            return X509Source(
                workload_api_client=client,
                socket_path=None if client is not None else socket,
                timeout_in_seconds=timeout_s,
                svid_picker=pick,
            )

        self._open = open_source
        self._x509 = open_source()

    def reopen(self) -> None:
        """Ask the Workload API again (blocking, up to the timeout): a new stream (over a
        new connection, unless a client was given) that starts with the X.509 context the
        SPIRE agent holds now. The old stream is closed once the new one has answered, so
        :meth:`load` always has one to read; a source the spiffe package closed after an
        unretryable error comes back this way. Raises what opening raises (the old source
        is kept then)."""
        new = self._open()
        for callback in self._callbacks:
            new.subscribe_for_updates(callback)
        old, self._x509 = self._x509, new
        old.close()

    def load(self) -> Material:
        from spiffe import TrustDomain

        ctx = self._x509.get_x509_context()
        svid = ctx.default_svid
        bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(TrustDomain(self.trust_domain))
        if bundle is None or not bundle.x509_authorities:
            raise IdentityError(f"the Workload API gave no bundle for {self.trust_domain}")
        der = serialization.Encoding.DER
        authorities = tuple(sorted(bundle.x509_authorities, key=lambda c: c.public_bytes(der)))
        return Material(_ec_key(svid.private_key, "X.509-SVID"), svid.leaf, authorities)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call *callback* (from the spiffe watcher thread) on every update (of this
        stream and of those :meth:`reopen` opens)."""
        self._callbacks.append(callback)
        self._x509.subscribe_for_updates(callback)

    def close(self) -> None:
        self._x509.close()


def select_source(
    paths: IdentityConfig,
    node_name: str,
    trust_domain: str,
    environ: Mapping[str, str] | None = None,
    client: Any = None,
) -> FileSource | WorkloadApiSource:
    """The Workload API when ``SPIFFE_ENDPOINT_SOCKET`` names an existing socket, else files."""
    env = os.environ if environ is None else environ
    endpoint = env.get(ENDPOINT_ENV, "")
    if endpoint:
        path = endpoint.removeprefix("unix:")
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        if os.path.exists(path):
            return WorkloadApiSource(endpoint, node_name, trust_domain, client=client)
        log.warning("%s=%s does not exist: reading the identity from files", ENDPOINT_ENV, endpoint)
    return FileSource(paths)


def _cert_detail(cert: x509.Certificate) -> dict[str, Any]:
    return {"serial": f"{cert.serial_number:x}", "not_after": cert.not_valid_after_utc.isoformat()}


class IdentityWatcher:
    """Follow the source and swap the agent's :class:`Identity` when it rotates."""

    def __init__(
        self,
        source: FileSource | WorkloadApiSource,
        identity: Identity,
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_rotate: Callable[[], None] | None = None,
        events: EventLog | None = None,
    ) -> None:
        self.source = source
        self.on_rotate = on_rotate
        self.events = events
        self.identity = identity
        self.poll_s = poll_s
        self.clock = clock
        # Plain counters, read by the metrics collector at scrape time.
        self.rotations = 0
        self.errors = 0
        self._current = Material(identity.key, identity.cert, identity.bundle).fingerprint()
        self._failing_since: float | None = None
        self._reported = False

    def check(self) -> bool:
        """Load the source once; swap if it changed. True when a swap happened."""
        try:
            material = self.source.load()
            if material.fingerprint() == self._current:
                self._failing_since = None
                return False
            self.identity.swap(material.key, material.cert, material.bundle)
        except Exception as exc:  # any bad set keeps the old identity
            now = self.clock()
            if self._failing_since is None:
                self._failing_since, self._reported = now, False
            if now - self._failing_since >= SETTLE_S and not self._reported:
                self._reported = True
                self.errors += 1
                log.warning(
                    "new identity from %s rejected, keeping the old one: %s", self.source.name, exc
                )
                if self.events is not None:
                    self.events.append(EventKind.IDENTITY_REJECTED, reason=self.source.name,
                                       detail={"error": str(exc)[:200]})
            else:
                log.debug("identity from %s not usable yet: %s", self.source.name, exc)
            return False
        self._failing_since = None
        self._current = material.fingerprint()
        self.rotations += 1
        cert = material.cert
        log.info(
            "identity rotated (%s): serial %x, valid until %s, %d trusted authorities",
            self.source.name,
            cert.serial_number,
            cert.not_valid_after_utc.isoformat(),
            len(material.bundle),
        )
        if self.events is not None:
            self.events.append(EventKind.IDENTITY_ROTATED, reason=self.source.name,
                               detail=_cert_detail(cert))
        if self.on_rotate is not None:
            self.on_rotate()
        return True

    @property
    def can_rerequest(self) -> bool:
        """Whether the source can be asked for the identity again (the Workload API; files
        are written by someone else: lab_pki from site.yml, or a SPIRE helper)."""
        return isinstance(self.source, WorkloadApiSource)

    async def rerequest(self) -> tuple[str, str, dict[str, Any]]:
        """Ask the source for the identity again and apply what it gives (the MAPE-K
        ``rerequest_identity`` action): (``done``, why, the new certificate's serial and
        end) when it rotated; ``noop`` when the source gave the certificate we have;
        ``failed`` when asking failed or what came does not load or verify (the old
        identity kept); ``refused`` for a source that cannot be asked. The blocking call
        runs in a worker thread; the swap on the event loop, as every rotation."""
        if not isinstance(self.source, WorkloadApiSource):
            return "refused", f"the identity comes from {self.source.name}, which cannot be " \
                "asked again (site.yml renews lab_pki certificates)", {}
        try:
            await asyncio.to_thread(self.source.reopen)
        except Exception as exc:  # no agent socket, a timeout: nothing changed
            return "failed", f"asking the Workload API again failed: {exc}"[:300], {}
        if self.check():
            cert = self.identity.cert
            return "done", f"new certificate, serial {cert.serial_number:x}, valid until " \
                f"{cert.not_valid_after_utc.isoformat()}", _cert_detail(cert)
        if self._failing_since is not None:
            return "failed", "the Workload API's answer does not load or verify: the old " \
                "identity kept", {}
        cert = self.identity.cert
        return "noop", "the Workload API gave the certificate we have (serial " \
            f"{cert.serial_number:x}, valid until {cert.not_valid_after_utc.isoformat()})", \
            _cert_detail(cert)

    async def run(self) -> None:
        """Poll files every ``poll_s``; wait for Workload API pushes."""
        if isinstance(self.source, WorkloadApiSource):
            loop = asyncio.get_running_loop()
            pushed = asyncio.Event()

            def notify() -> None:  # runs in the spiffe watcher thread
                loop.call_soon_threadsafe(pushed.set)

            self.source.subscribe(notify)
            while True:
                # A push that fails to apply is retried on the poll cadence.
                retry = self.poll_s if self._failing_since is not None else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pushed.wait(), retry)
                pushed.clear()
                self.check()
        stamp = self.source.stamp()
        while True:
            await asyncio.sleep(self.poll_s)
            new = self.source.stamp()
            if new != stamp or self._failing_since is not None:
                stamp = new
                self.check()
