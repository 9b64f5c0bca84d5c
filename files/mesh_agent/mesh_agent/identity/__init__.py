"""Node identity: an X.509-SVID (EC P-256) and the trust bundle (CA cert).

The SVID carries the URI SAN ``spiffe://<trust-domain>/node/<name>`` (SPIFFE
X.509-SVID spec, section 2). Adverts are signed with ECDSA-SHA256 over the
node key; receivers check the origin's certificate was issued by the CA, is
within its validity window, and names the advert's origin.

The certificate also binds the node's mesh address: it must name the address
an advert claims, as an iPAddress SAN (lab PKI, x509pop) or as the address's
``in-addr.arpa`` DNS name (RFC 1035 section 3.5; SPIRE registration entries can
carry DNS names but not IP SANs), see :func:`cert_addresses`.

Validity windows are checked only while ``check_validity`` is set: the agent
sets it from :mod:`mesh_agent.identity.clock` once the clock is trustworthy
(a Pi has no RTC), so a node whose clock is far off still joins and accepts
its peers; chain, SAN and signature are always checked.

Only single-level trust is supported: each SVID must be issued directly by
one of the bundle's authorities (the lab CA, or a SPIRE server that signs SVIDs
itself); intermediate chains are out of scope for now. The bundle may hold
several authorities, as SPIRE's does while it rotates its CA.

Rotation (see :mod:`mesh_agent.identity.watch`) replaces the key, the
certificate and the bundle in one synchronous :meth:`Identity.swap`, so every
advert is signed and checked with one coherent set; routes are not touched.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

if TYPE_CHECKING:  # config imports the clock rule from this package
    from mesh_agent.config import IdentityConfig

SPIFFE_NODE_PREFIX = "/node/"
# Verified certificates remembered (by DER digest); a mesh of N nodes needs N
# (2N while they rotate). Bounded so a stream of valid-but-new certificates
# (an insider minting them) cannot grow it without limit.
TRUSTED_CACHE_MAX = 4096


def life_used(cert: x509.Certificate, now: float) -> float:
    """How far through its validity *cert* is at *now* (Unix seconds): 0 at notBefore,
    1 at notAfter, above 1 once expired, below 0 before it starts."""
    start = cert.not_valid_before_utc.timestamp()
    span = cert.not_valid_after_utc.timestamp() - start
    return (now - start) / span if span > 0 else 1.0


class IdentityError(Exception):
    """A certificate is not trusted for the name it claims (reason in str)."""


def spiffe_id(trust_domain: str, node_name: str) -> str:
    return f"spiffe://{trust_domain}{SPIFFE_NODE_PREFIX}{node_name}"


def _uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value.get_values_for_type(x509.UniformResourceIdentifier))


def cert_addresses(cert: x509.Certificate) -> frozenset[str]:
    """The IPv4 addresses *cert* names: iPAddress SANs and ``d.c.b.a.in-addr.arpa`` DNS SANs."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return frozenset()
    out = {
        str(ip)
        for ip in ext.value.get_values_for_type(x509.IPAddress)
        if isinstance(ip, ipaddress.IPv4Address)
    }
    for name in ext.value.get_values_for_type(x509.DNSName):
        labels = name.lower().rstrip(".").split(".")
        if len(labels) == 6 and labels[4:] == ["in-addr", "arpa"]:
            try:
                out.add(str(ipaddress.IPv4Address(".".join(reversed(labels[:4])))))
            except ValueError:
                continue
    return frozenset(out)


def address_san(address: str) -> str:
    """The DNS SAN that binds *address* when an issuer cannot write IP SANs (SPIRE)."""
    return ipaddress.IPv4Address(address).reverse_pointer


@dataclass(frozen=True)
class Peer:
    """What a verified certificate proves: a node name, its key, its addresses."""

    name: str
    public_key: ec.EllipticCurvePublicKey
    not_before: dt.datetime
    not_after: dt.datetime
    addresses: frozenset[str]


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _spki(pub: object) -> bytes:
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        return b""
    return pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _ders(certs: tuple[x509.Certificate, ...]) -> frozenset[bytes]:
    return frozenset(c.public_bytes(serialization.Encoding.DER) for c in certs)


@dataclass
class Identity:
    """This node's signing key and certificate plus the CA used to verify peers."""

    node_name: str
    trust_domain: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    ca: x509.Certificate
    # Every authority trusted for peers' SVIDs; empty means (ca,).
    bundle: tuple[x509.Certificate, ...] = ()
    # Our mesh address: when set, our own certificate must name it.
    node_address: str | None = None
    # Check validity windows (notBefore/notAfter); the agent clears it while
    # the clock is not trustworthy (mesh_agent.identity.clock).
    check_validity: bool = True

    def __post_init__(self) -> None:
        if not self.bundle:
            self.bundle = (self.ca,)
        self.cert_der = self.cert.public_bytes(serialization.Encoding.DER)
        # Verified peer certificates keyed by the DER's digest: a flooded mesh
        # sees the same certificate every advert_interval_s from every origin.
        self._trusted: dict[bytes, Peer] = {}
        self._untrusted: dict[bytes, str] = {}
        # Fail early if our own cert would be rejected by our peers.
        own = self.verify_cert(self.cert_der, self.node_name)
        if self.node_address is not None and self.node_address not in own.addresses:
            raise IdentityError(
                f"the certificate for {self.node_name} does not name its node address "
                f"{self.node_address} (an IP SAN, or the DNS SAN {address_san(self.node_address)})"
            )

    def swap(
        self,
        key: ec.EllipticCurvePrivateKey,
        cert: x509.Certificate,
        bundle: tuple[x509.Certificate, ...],
    ) -> None:
        """Replace the signing key, certificate and trust bundle together.

        The new set is checked first (key matches the certificate, the
        certificate is a valid SVID for this node under the new bundle); on
        any failure :class:`IdentityError` is raised and nothing changes.
        """
        if not bundle:
            raise IdentityError("empty trust bundle")
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise IdentityError("private key does not match the certificate")
        candidate = Identity(
            self.node_name,
            self.trust_domain,
            key,
            cert,
            bundle[0],
            bundle,
            self.node_address,
            self.check_validity,
        )
        bundle_changed = _ders(bundle) != _ders(self.bundle)
        self.key, self.cert, self.ca, self.bundle = key, cert, bundle[0], bundle
        self.cert_der = candidate.cert_der
        if bundle_changed:
            # A peer certificate trusted under a dropped authority must be checked again,
            # and one refused under the old bundle may be trusted now.
            self._trusted = candidate._trusted
            self._untrusted = candidate._untrusted

    @classmethod
    def load(
        cls,
        paths: IdentityConfig,
        node_name: str,
        trust_domain: str,
        node_address: str | None = None,
    ) -> Identity:
        key = serialization.load_pem_private_key(Path(paths.key).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise IdentityError(f"{paths.key}: expected an EC P-256 private key")
        cert = x509.load_pem_x509_certificate(Path(paths.cert).read_bytes())
        bundle = tuple(x509.load_pem_x509_certificates(Path(paths.ca).read_bytes()))
        return cls(node_name, trust_domain, key, cert, bundle[0], bundle, node_address)

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def verify_cert(self, cert_der: bytes, origin: str, now: dt.datetime | None = None) -> Peer:
        """What *cert_der* proves if it is a valid SVID for *origin*.

        Raises :class:`IdentityError` otherwise, whatever is wrong with the
        bytes (a certificate that does not parse, an invalid X.509 version, a
        malformed extension): nothing else escapes.
        """
        now = now or dt.datetime.now(dt.UTC)
        digest = hashlib.sha256(cert_der).digest()
        peer = self._trusted.get(digest)
        if peer is None:
            known_bad = self._untrusted.get(digest)
            if known_bad is not None:
                raise IdentityError(known_bad)
            try:
                peer = self._verify_new(cert_der)
            except IdentityError as exc:
                # Remembered, so a certificate sent again costs a lookup, not a chain check.
                if len(self._untrusted) >= TRUSTED_CACHE_MAX:
                    self._untrusted.pop(next(iter(self._untrusted)))
                self._untrusted[digest] = str(exc)
                raise
            if len(self._trusted) >= TRUSTED_CACHE_MAX:
                self._trusted.pop(next(iter(self._trusted)))
            self._trusted[digest] = peer
        if self.check_validity and not peer.not_before <= now <= peer.not_after:
            raise IdentityError("certificate outside its validity window")
        if peer.name != origin:
            raise IdentityError(f"SAN names {peer.name!r}, advert origin is {origin!r}")
        return peer

    def _verify_new(self, cert_der: bytes) -> Peer:
        try:
            cert = x509.load_der_x509_certificate(cert_der)
            if not any(_issued_by(cert, ca) for ca in self.bundle):
                raise IdentityError("certificate not issued by the trusted CA")
            key = cert.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise IdentityError("certificate key is not EC")
            prefix = f"spiffe://{self.trust_domain}{SPIFFE_NODE_PREFIX}"
            names = [u[len(prefix) :] for u in _uri_sans(cert) if u.startswith(prefix)]
            if len(names) != 1:
                raise IdentityError(f"certificate has no single {prefix}<name> URI SAN")
            return Peer(
                names[0],
                key,
                cert.not_valid_before_utc,
                cert.not_valid_after_utc,
                cert_addresses(cert),
            )
        except IdentityError:
            raise
        except Exception as exc:  # any parse failure (InvalidVersion is not a ValueError)
            raise IdentityError(f"certificate does not parse: {type(exc).__name__}") from exc

    @staticmethod
    def verify_signature(pub: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
        try:
            pub.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except Exception:  # InvalidSignature, or bytes that are no DER signature at all
            return False
        return True
