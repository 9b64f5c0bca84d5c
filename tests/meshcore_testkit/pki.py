"""Throw-away test PKI made with `cryptography` at test time (no keys are committed)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mesh_agent.identity import Identity, spiffe_id

TRUST_DOMAIN = "mesh.lab"


@dataclass
class CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "mesh-lab-ca") -> CA:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self,
        san_name: str,
        key: ec.EllipticCurvePrivateKey | None = None,
        trust_domain: str = TRUST_DOMAIN,
        days: float = 1.0,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = key or ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, san_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(spiffe_id(trust_domain, san_name))]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return key, cert

    def identity(self, name: str) -> Identity:
        key, cert = self.issue(name)
        return Identity(name, TRUST_DOMAIN, key, cert, self.cert)

    def write(self, directory: Path, name: str) -> dict[str, str]:
        """Write node.key/node.crt/ca.crt for *name* under *directory*; return the paths."""
        key, cert = self.issue(name)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {
            "key": directory / "node.key",
            "cert": directory / "node.crt",
            "ca": directory / "ca.crt",
        }
        paths["key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        paths["key"].chmod(0o600)
        paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths["ca"].write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return {k: str(v) for k, v in paths.items()}
