"""Node identity: an X.509-SVID (EC P-256) and the trust bundle (CA cert).

The SVID carries the URI SAN ``spiffe://<trust-domain>/node/<name>`` (SPIFFE
X.509-SVID spec, section 2). Adverts are signed with ECDSA-SHA256 over the
node key; receivers check the origin's certificate was issued by the CA, is
within its validity window, and names the advert's origin.

Only a single-level CA (the lab CA, or a SPIRE server that signs SVIDs
directly) is supported: intermediate chains are out of scope for now.
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


@dataclass
class Identity:
    """This node's signing key and certificate plus the CA used to verify peers."""

    node_name: str
    trust_domain: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    ca: x509.Certificate

    def __post_init__(self) -> None:
        self.cert_der = self.cert.public_bytes(serialization.Encoding.DER)
        # Verified peer certificates keyed by the DER's digest: a flooded mesh
        # sees the same certificate every advert_interval_s from every origin.
        self._trusted: dict[bytes, tuple[str, ec.EllipticCurvePublicKey, dt.datetime]] = {}
        # Fail early if our own cert would be rejected by our peers.
        self.verify_cert(self.cert_der, self.node_name)

    @classmethod
    def load(cls, paths: IdentityConfig, node_name: str, trust_domain: str) -> Identity:
        key = serialization.load_pem_private_key(Path(paths.key).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise IdentityError(f"{paths.key}: expected an EC P-256 private key")
        cert = x509.load_pem_x509_certificate(Path(paths.cert).read_bytes())
        ca = x509.load_pem_x509_certificate(Path(paths.ca).read_bytes())
        return cls(node_name=node_name, trust_domain=trust_domain, key=key, cert=cert, ca=ca)

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
        try:
            cert.verify_directly_issued_by(self.ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise IdentityError("certificate not issued by the trusted CA") from exc
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
