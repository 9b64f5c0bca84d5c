"""Node identity: an X.509-SVID (EC P-256) and the trust bundle (CA cert).

The SVID carries the URI SAN ``spiffe://<trust-domain>/node/<name>`` (SPIFFE
X.509-SVID spec, section 2). Adverts are signed with ECDSA-SHA256 over the
node key; receivers check the origin's certificate was issued by the CA, is
within its validity window, and names the advert's origin.

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
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mesh_agent.config import IdentityConfig

SPIFFE_NODE_PREFIX = "/node/"


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

    def __post_init__(self) -> None:
        if not self.bundle:
            self.bundle = (self.ca,)
        self.cert_der = self.cert.public_bytes(serialization.Encoding.DER)
        # Verified peer certificates keyed by the DER's digest: a flooded mesh
        # sees the same certificate every advert_interval_s from every origin.
        self._trusted: dict[bytes, tuple[str, ec.EllipticCurvePublicKey, dt.datetime]] = {}
        # Fail early if our own cert would be rejected by our peers.
        self.verify_cert(self.cert_der, self.node_name)

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
        candidate = Identity(self.node_name, self.trust_domain, key, cert, bundle[0], bundle)
        bundle_changed = _ders(bundle) != _ders(self.bundle)
        self.key, self.cert, self.ca, self.bundle = key, cert, bundle[0], bundle
        self.cert_der = candidate.cert_der
        if bundle_changed:
            # A peer certificate trusted under a dropped authority must be checked again.
            self._trusted = candidate._trusted

    @classmethod
    def load(cls, paths: IdentityConfig, node_name: str, trust_domain: str) -> Identity:
        key = serialization.load_pem_private_key(Path(paths.key).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise IdentityError(f"{paths.key}: expected an EC P-256 private key")
        cert = x509.load_pem_x509_certificate(Path(paths.cert).read_bytes())
        bundle = tuple(x509.load_pem_x509_certificates(Path(paths.ca).read_bytes()))
        return cls(node_name, trust_domain, key, cert, bundle[0], bundle)

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def verify_cert(
        self, cert_der: bytes, origin: str, now: dt.datetime | None = None
    ) -> ec.EllipticCurvePublicKey:
        """Return the public key of *cert_der* if it is a valid SVID for *origin*.

        Raises :class:`IdentityError` otherwise.
        """
        now = now or dt.datetime.now(dt.UTC)
        digest = hashlib.sha256(cert_der).digest()
        cached = self._trusted.get(digest)
        if cached is not None:
            name, cached_pub, not_after = cached
            if now > not_after:
                raise IdentityError("certificate expired")
            if name != origin:
                raise IdentityError(f"SAN names {name!r}, advert origin is {origin!r}")
            return cached_pub
        try:
            cert = x509.load_der_x509_certificate(cert_der)
        except ValueError as exc:
            raise IdentityError("certificate does not parse") from exc
        if not any(_issued_by(cert, ca) for ca in self.bundle):
            raise IdentityError("certificate not issued by the trusted CA")
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise IdentityError("certificate outside its validity window")
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise IdentityError("certificate key is not EC")
        pub = key
        prefix = f"spiffe://{self.trust_domain}{SPIFFE_NODE_PREFIX}"
        names = [u[len(prefix) :] for u in _uri_sans(cert) if u.startswith(prefix)]
        if len(names) != 1:
            raise IdentityError(f"certificate has no single {prefix}<name> URI SAN")
        self._trusted[digest] = (names[0], pub, cert.not_valid_after_utc)
        if names[0] != origin:
            raise IdentityError(f"SAN names {names[0]!r}, advert origin is {origin!r}")
        return pub

    @staticmethod
    def verify_signature(pub: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
        try:
            pub.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True
