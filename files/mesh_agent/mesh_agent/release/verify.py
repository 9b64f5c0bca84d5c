"""Release verification on the node: a sans-I/O core, no files, no clock.

A release is described by its **manifest** (JSON bytes: version, serial, the
agent's wire version, and the SHA-256 of every file in the release), signed
offline by k of n maintainers with Ed25519 (Gluon's autoupdater model, with
Ed25519 instead of ECDSA). The node holds the maintainers' public keys and the
threshold k (:class:`TrustPolicy`) and a small persisted state
(:class:`InstalledState`): the highest version it ever installed and, per
version, the highest manifest serial it accepted.

:func:`verify` takes the manifest bytes, the signatures, the policy, that state
and the digests of the files the node received, and returns :class:`Accept`
(with the state to persist once the release is in place) or :class:`Refuse`
with one :class:`Reason` and a sentence. The checks, in this order (the
manifest's content is not trusted before its signatures are):

1. signatures: at least k distinct trusted keys with a valid signature over the
   exact manifest bytes. Short of k, the refusal names the cause:
   ``unknown_key`` when some signature came from a key the node does not trust,
   else ``too_few_signatures`` (which counts the invalid ones). With k valid
   signatures, signatures by unknown keys are ignored and reported, so a release
   signed by a new maintainer's key as well still installs on a node whose key
   file is not yet rotated.
2. ``malformed``: the signed bytes are not a manifest of this schema.
3. ``replay``: a manifest of a version already accepted with a higher serial
   (an older manifest of that version re-presented). No flag overrides it.
4. ``downgrade``: a version below the highest one installed; ``allow_downgrade``
   (an operator's deliberate rollback) lets it through.
5. ``wire_version``: the release speaks another wire version than the running
   agent (version-2 agents form no adjacency with version-1 ones, see
   docs/security.md); ``allow_wire_change`` lets it through.
6. ``file_hash``: a received file is missing from the manifest or its digest
   differs.

Versions are ``X.Y.Z`` and compare numerically.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MANIFEST_SCHEMA = 1
KEY_ID_LEN = 16  # hex characters of sha256(raw public key)

Version = tuple[int, int, int]


class ReleaseFormatError(ValueError):
    """A keys, signatures, state or manifest document that cannot be read."""


class Reason(StrEnum):
    """Why a release is refused (also the ``reason`` in logs and ``--json`` output)."""

    TOO_FEW_SIGNATURES = "too_few_signatures"
    UNKNOWN_KEY = "unknown_key"
    MALFORMED = "malformed"
    REPLAY = "replay"
    DOWNGRADE = "downgrade"
    WIRE_VERSION = "wire_version"
    FILE_HASH = "file_hash"


def parse_version(text: str) -> Version:
    """``"1.2.3"`` -> ``(1, 2, 3)``; anything else raises :class:`ReleaseFormatError`."""
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 9 for p in parts):
        raise ReleaseFormatError(f"version {text!r} is not X.Y.Z")
    return int(parts[0]), int(parts[1]), int(parts[2])


def format_version(v: Version) -> str:
    return ".".join(str(x) for x in v)


def key_id(public_raw: bytes) -> str:
    """A key's id: the first 16 hex digits of the SHA-256 of its raw 32 bytes."""
    return hashlib.sha256(public_raw).hexdigest()[:KEY_ID_LEN]


def _b64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ReleaseFormatError(f"{what} is not base64") from exc


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    name: str
    public_raw: bytes


@dataclass(frozen=True)
class TrustPolicy:
    """The maintainers' public keys and how many of them must sign (k of n)."""

    keys: Mapping[str, TrustedKey]
    threshold: int

    @classmethod
    def from_json(cls, data: bytes | str) -> TrustPolicy:
        """Read a trusted-keys file: ``{"threshold": k, "keys": [{"name", "public_key"}]}``
        (``public_key`` is the raw 32-byte key in base64; ``id`` is derived, and checked
        when given)."""
        try:
            doc = json.loads(data)
            threshold = doc["threshold"]
            entries = doc["keys"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ReleaseFormatError(f"trusted keys: {exc}") from exc
        keys: dict[str, TrustedKey] = {}
        for e in entries if isinstance(entries, list) else []:
            if not isinstance(e, dict):
                raise ReleaseFormatError("trusted keys: an entry is not an object")
            raw = _b64(e.get("public_key", ""), f"public key of {e.get('name')!r}")
            if len(raw) != 32:
                raise ReleaseFormatError(f"public key of {e.get('name')!r} is not 32 bytes")
            kid = key_id(raw)
            if "id" in e and e["id"] != kid:
                raise ReleaseFormatError(f"key {e.get('name')!r}: id {e['id']} is not {kid}")
            keys[kid] = TrustedKey(kid, str(e.get("name", kid)), raw)
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
            raise ReleaseFormatError("trusted keys: threshold must be an integer >= 1")
        if threshold > len(keys):
            raise ReleaseFormatError(
                f"trusted keys: threshold {threshold} but only {len(keys)} distinct keys")
        return cls(keys, threshold)

    def to_json(self) -> str:
        keys = [{"name": k.name, "id": k.key_id,
                 "public_key": base64.b64encode(k.public_raw).decode()}
                for k in sorted(self.keys.values(), key=lambda k: k.name)]
        return json.dumps({"threshold": self.threshold, "keys": keys}, indent=2) + "\n"


@dataclass(frozen=True)
class Signature:
    key_id: str
    signature: bytes

    def line(self) -> str:
        return f"{self.key_id} {base64.b64encode(self.signature).decode()}"


def parse_signatures(text: str) -> list[Signature]:
    """A signatures file: one ``<key id> <base64 signature>`` per line; ``#`` comments."""
    sigs = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ReleaseFormatError(f"signatures line {n}: expected '<key id> <signature>'")
        sigs.append(Signature(parts[0], _b64(parts[1], f"signature on line {n}")))
    return sigs


@dataclass(frozen=True)
class InstalledState:
    """What the node persists between installs (``<state_dir>/release-state.json``)."""

    highest_version: Version | None = None
    serials: Mapping[str, int] = field(default_factory=dict)  # version -> highest serial

    @classmethod
    def from_json(cls, data: bytes | str) -> InstalledState:
        try:
            doc = json.loads(data)
            hv = doc.get("highest_version")
            serials = {str(k): int(v) for k, v in doc.get("serials", {}).items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise ReleaseFormatError(f"release state: {exc}") from exc
        return cls(None if hv is None else parse_version(hv), serials)

    def to_json(self) -> str:
        hv = None if self.highest_version is None else format_version(self.highest_version)
        return json.dumps({"highest_version": hv, "serials": dict(sorted(self.serials.items()))},
                          indent=2, sort_keys=True) + "\n"

    def after(self, m: Manifest) -> InstalledState:
        """The state once *m* is installed: the highest version never goes down."""
        hv = m.version if self.highest_version is None else max(self.highest_version, m.version)
        key = format_version(m.version)
        serials = dict(self.serials)
        serials[key] = max(serials.get(key, m.serial), m.serial)
        return InstalledState(hv, serials)


@dataclass(frozen=True)
class Manifest:
    version: Version
    serial: int
    wire_version: int
    files: Mapping[str, str]  # path in the release -> sha256 hex
    doc: Mapping[str, Any]

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        try:
            doc = json.loads(data)
            if doc.get("schema") != MANIFEST_SCHEMA:
                raise ReleaseFormatError(f"schema {doc.get('schema')!r}, not {MANIFEST_SCHEMA}")
            files = doc["files"]
            if not isinstance(files, dict) or not all(
                    isinstance(v, str) and len(v) == 64 for v in files.values()):
                raise ReleaseFormatError("files is not a map of path to sha256")
            serial, wire = doc["serial"], doc["wire_version"]
            if not isinstance(serial, int) or not isinstance(wire, int):
                raise ReleaseFormatError("serial and wire_version must be integers")
            return cls(parse_version(doc["version"]), serial, wire, files, doc)
        except ReleaseFormatError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ReleaseFormatError(f"manifest: {exc!r}") from exc

    @property
    def version_text(self) -> str:
        return format_version(self.version)


@dataclass(frozen=True)
class Accept:
    manifest: Manifest
    signed_by: tuple[str, ...]  # names of the trusted keys with a valid signature
    ignored_keys: tuple[str, ...]  # ids of signatures from keys this node does not trust
    state: InstalledState  # persist this once the release is in place
    ok: bool = True


@dataclass(frozen=True)
class Refuse:
    reason: Reason
    message: str
    ok: bool = False


Verdict = Accept | Refuse


def check_signatures(data: bytes, signatures: Iterable[Signature],
                     trust: TrustPolicy) -> tuple[list[str], list[str], int]:
    """(names of trusted keys with a valid signature, unknown key ids, invalid count).

    A key counts once however many signatures it made."""
    valid: dict[str, str] = {}
    unknown: list[str] = []
    invalid = 0
    for s in signatures:
        key = trust.keys.get(s.key_id)
        if key is None:
            if s.key_id not in unknown:
                unknown.append(s.key_id)
            continue
        try:
            Ed25519PublicKey.from_public_bytes(key.public_raw).verify(s.signature, data)
        except InvalidSignature:
            invalid += 1
            continue
        valid[key.key_id] = key.name
    return sorted(valid.values()), unknown, invalid


def verify(manifest_bytes: bytes, signatures: Iterable[Signature], trust: TrustPolicy,
           state: InstalledState, file_digests: Mapping[str, str], *,
           running_wire_version: int | None, allow_downgrade: bool = False,
           allow_wire_change: bool = False) -> Verdict:
    """Accept the release described by *manifest_bytes*, or refuse it with one reason.

    *file_digests* maps each received file's path in the release to its SHA-256;
    *running_wire_version* is the live agent's (None: no agent installed yet).
    """
    signed_by, unknown, invalid = check_signatures(manifest_bytes, signatures, trust)
    if len(signed_by) < trust.threshold:
        got = f"{len(signed_by)} valid signature(s) of trusted keys, {trust.threshold} needed"
        if unknown:
            return Refuse(Reason.UNKNOWN_KEY,
                          f"signed by key(s) this node does not trust ({', '.join(unknown)}); "
                          f"{got}")
        extra = f" ({invalid} invalid)" if invalid else ""
        return Refuse(Reason.TOO_FEW_SIGNATURES, got + extra)
    try:
        m = Manifest.parse(manifest_bytes)
    except ReleaseFormatError as exc:
        return Refuse(Reason.MALFORMED, f"the signed manifest cannot be read: {exc}")
    seen = state.serials.get(m.version_text)
    if seen is not None and m.serial < seen:
        return Refuse(Reason.REPLAY,
                      f"manifest of {m.version_text} has serial {m.serial}, older than serial "
                      f"{seen} already accepted for that version (a replayed manifest)")
    if state.highest_version is not None and m.version < state.highest_version \
            and not allow_downgrade:
        return Refuse(Reason.DOWNGRADE,
                      f"{m.version_text} is older than {format_version(state.highest_version)}, "
                      "the highest installed here (allow a downgrade explicitly to roll back)")
    if running_wire_version is not None and m.wire_version != running_wire_version \
            and not allow_wire_change:
        return Refuse(Reason.WIRE_VERSION,
                      f"release speaks wire version {m.wire_version}, the running agent "
                      f"{running_wire_version}: they form no adjacency (allow a wire change "
                      "explicitly, and upgrade the whole mesh together)")
    for path, digest in sorted(file_digests.items()):
        want = m.files.get(path)
        if want is None:
            return Refuse(Reason.FILE_HASH, f"{path} is not in the manifest")
        if want != digest:
            return Refuse(Reason.FILE_HASH,
                          f"{path} has sha256 {digest[:16]}..., the manifest says {want[:16]}...")
    return Accept(m, tuple(signed_by), tuple(unknown), state.after(m))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
