"""Throw-away test PKI made with `cryptography` at test time (no keys are committed)."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Sequence
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
        addresses: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        not_before: dt.datetime | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A node certificate: URI SAN spiffe://<td>/node/<name>, plus IP SANs for *addresses*."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(spiffe_id(trust_domain, san_name))
        ]
        sans += [x509.IPAddress(ipaddress.IPv4Address(a)) for a in addresses]
        sans += [x509.DNSName(d) for d in dns_names]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, san_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return key, cert

    def identity(self, name: str, address: str | None = None) -> Identity:
        """*name*'s identity; with *address*, its certificate binds that node address."""
        key, cert = self.issue(name, addresses=[address] if address else ())
        return Identity(name, TRUST_DOMAIN, key, cert, self.cert, node_address=address)

    def write(self, directory: Path, name: str, address: str | None = None) -> dict[str, str]:
        """Write node.key/node.crt/ca.crt for *name* under *directory*; return the paths."""
        key, cert = self.issue(name, addresses=[address] if address else ())
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


class PairKeysForTests:
    """Deterministic per-pair hello keys for sans-I/O sensor tests.

    The agent derives real ones from certificates (mesh_agent.identity.hellokeys,
    tested with this PKI in test_hello_auth.py); the sensor only needs both ends
    of a pair to agree. Names in *unknown* have no key (identity not verified).
    """

    def __init__(self, me: str, unknown: set[str] | None = None) -> None:
        self.me = me
        self.unknown = unknown if unknown is not None else set()

    def keys(self, name: str, now: float) -> list[bytes]:
        if name in self.unknown:
            return []
        a, b = sorted((self.me, name))
        return [hashlib.sha256(f"{a}|{b}".encode()).digest()]


def redate(ca_dir: Path, path: Path, left: dt.timedelta,
           span: dt.timedelta = dt.timedelta(days=30)) -> x509.Certificate:
    """Re-sign the certificate at *path* with the CA in *ca_dir* (``ca.crt``, ``ca.key``:
    a lab_pki CA) keeping its key, names and extensions, so that it ends *left* from now
    (negative: already ended) after a validity of *span*: the file as it is that long
    before (or after) its end. Returns the new certificate (also written to *path*)."""
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca_dir / 'ca.key'}: not an EC key")
    old = x509.load_pem_x509_certificate(path.read_bytes())
    end = dt.datetime.now(dt.UTC) + left
    builder = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(ca.subject)
               .public_key(old.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(end - span).not_valid_after(end))
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    cert = builder.sign(ca_key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert
