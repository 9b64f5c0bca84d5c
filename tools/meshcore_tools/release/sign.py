"""Offline k-of-n Ed25519 signatures over a release manifest (``cryptography``).

Each maintainer holds one private key (PKCS#8 PEM, optionally encrypted, on an
offline machine) and signs the manifest's exact bytes; the signatures file
collects one line per maintainer (the format and the checks are the node's own,
:mod:`mesh_agent.release.verify`). Nothing here touches the network.
"""

from __future__ import annotations

import base64
import json
import os
import tarfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mesh_agent.release.verify import (
    Accept,
    InstalledState,
    Refuse,
    Signature,
    TrustPolicy,
    key_id,
    parse_signatures,
    sha256_hex,
    verify,
)


class SignError(Exception):
    pass


def public_raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def keygen(private_path: Path, passphrase: bytes | None = None) -> bytes:
    """A new key at *private_path* (mode 0600, never overwritten); returns the public key."""
    key = Ed25519PrivateKey.generate()
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase
        else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return public_raw(key)


def load_private(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=passphrase)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignError(f"{path} is not an Ed25519 private key")
    return key


def add_trusted(keys_path: Path, name: str, public: bytes, threshold: int | None) -> TrustPolicy:
    """Add (or replace, by name) a maintainer's key in a trusted-keys file."""
    if keys_path.exists():
        doc = json.loads(keys_path.read_text())
    else:
        doc = {"threshold": threshold or 1, "keys": []}
    doc["keys"] = [k for k in doc["keys"] if k.get("name") != name]
    doc["keys"].append({"name": name, "id": key_id(public),
                        "public_key": base64.b64encode(public).decode()})
    if threshold is not None:
        doc["threshold"] = threshold
    policy = TrustPolicy.from_json(json.dumps(doc))
    keys_path.write_text(policy.to_json())
    return policy


def remove_trusted(keys_path: Path, name: str) -> TrustPolicy:
    doc = json.loads(keys_path.read_text())
    before = len(doc["keys"])
    doc["keys"] = [k for k in doc["keys"] if k.get("name") != name]
    if len(doc["keys"]) == before:
        raise SignError(f"no key named {name!r} in {keys_path}")
    policy = TrustPolicy.from_json(json.dumps(doc))
    keys_path.write_text(policy.to_json())
    return policy


def sign(manifest: bytes, key: Ed25519PrivateKey) -> Signature:
    return Signature(key_id(public_raw(key)), key.sign(manifest))


def append_signature(sigs_path: Path, sig: Signature) -> None:
    """Add *sig* to the signatures file, replacing an earlier one by the same key."""
    old = parse_signatures(sigs_path.read_text()) if sigs_path.exists() else []
    kept = [s for s in old if s.key_id != sig.key_id] + [sig]
    sigs_path.write_text("".join(s.line() + "\n" for s in kept))


def read_release(tarball: Path) -> dict[str, bytes]:
    """Every file of a release tarball by its path inside the release."""
    out: dict[str, bytes] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for m in tar:
            if m.isfile():
                f = tar.extractfile(m)
                _, _, rel = m.name.partition("/")
                out[rel] = f.read() if f else b""
    return out


def verify_release(tarball: Path, sigs: list[Signature], trust: TrustPolicy,
                   manifest: bytes | None = None) -> Accept | Refuse | str:
    """Check a release on the controller: the node's checks over every file, plus the
    tarball's own SHA256SUMS and its copy of the manifest. A str is a refusal of those."""
    files = read_release(tarball)
    inner = files.pop("manifest.json", None)
    sums = files.pop("SHA256SUMS", b"").decode()
    if inner is None:
        return "the tarball has no manifest.json"
    if manifest is not None and manifest != inner:
        return "the detached manifest differs from the tarball's manifest.json"
    verdict = verify(inner, sigs, trust, InstalledState(),
                     {p: sha256_hex(d) for p, d in files.items()}, running_wire_version=None)
    if isinstance(verdict, Refuse):
        return verdict
    listed: dict[str, str] = {}
    for line in sums.splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    want = {p: sha256_hex(d) for p, d in files.items()} | {"manifest.json": sha256_hex(inner)}
    if listed != want:
        return "SHA256SUMS does not match the files"
    missing = set(verdict.manifest.files) - set(files)
    if missing:
        return f"files in the manifest but not in the tarball: {', '.join(sorted(missing))}"
    return verdict
