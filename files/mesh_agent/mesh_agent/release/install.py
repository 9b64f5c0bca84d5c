"""Install a signed release on the node: verify, unpack beside the live one, rename in.

The I/O around :func:`mesh_agent.release.verify.verify`: it reads the files,
hashes the agent bundle for this machine, and only when the verdict is
:class:`~mesh_agent.release.verify.Accept` unpacks the bundle into
``releases/.incoming-<id>-<pid>/``, writes ``release.json`` there and renames
the directory to ``releases/<id>``: a release directory is whole or absent,
whatever fails or crashes on the way (leftover incoming directories are removed
on the next attempt and by ``meshctl release prune``). ``current`` is not
touched: activation is :meth:`mesh_agent.release.store.Releases.use`.

A refusal is logged (logger ``mesh_agent.release``) with its reason and raised
as :class:`InstallRefused`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mesh_agent.release.store import INCOMING_PREFIX, RELEASE_INFO, Releases, valid_id
from mesh_agent.release.verify import (
    Accept,
    InstalledState,
    Reason,
    Refuse,
    Signature,
    TrustPolicy,
    verify,
)
from mesh_agent.store.seq import write_atomic

log = logging.getLogger("mesh_agent.release")

STATE_FILE = "release-state.json"
BUNDLE_PREFIX = "opt/mesh-agent/releases"  # where scripts/agent-bundle.sh packs a venv


class InstallRefused(Exception):
    def __init__(self, reason: Reason | str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = str(reason)
        self.message = message


@dataclass(frozen=True)
class Installed:
    release_id: str
    version: str
    signed_by: tuple[str, ...]
    ignored_keys: tuple[str, ...]
    already: bool  # it was installed before; nothing was unpacked


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def bundle_entry(manifest_bytes: bytes, machine: str) -> tuple[str, str]:
    """(path of this machine's bundle in the release, its release id), from the manifest.

    Read before the signatures are checked only to know which file to hash; the
    verdict then covers these same bytes."""
    try:
        bundles = json.loads(manifest_bytes)["agent"]["bundles"]
        entry = bundles[machine]
        path, rid = entry["path"], entry["release"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InstallRefused(Reason.MALFORMED,
                             f"the manifest has no agent bundle for {machine}") from exc
    if not isinstance(path, str) or not isinstance(rid, str) or not valid_id(rid):
        raise InstallRefused(Reason.MALFORMED, f"bad bundle entry for {machine}")
    return path, rid


def _members(tar: tarfile.TarFile, release_id: str) -> list[tuple[tarfile.TarInfo, str]]:
    """Every member with its path inside the release, or a refusal: only plain files,
    directories and symlinks, all under the release's own prefix, none written through
    a symlink of the archive (a venv's ``bin/python`` links to the system's)."""
    prefix = PurePosixPath(BUNDLE_PREFIX, release_id)
    out: list[tuple[tarfile.TarInfo, str]] = []
    links: set[PurePosixPath] = set()
    for m in tar.getmembers():
        p = PurePosixPath(m.name[2:] if m.name.startswith("./") else m.name)
        if p.is_absolute() or ".." in p.parts:
            raise InstallRefused(Reason.MALFORMED, f"bundle member {m.name!r} escapes")
        if p in prefix.parents or p == PurePosixPath("."):
            continue  # opt/, opt/mesh-agent/ ... the directories above the release
        try:
            rel = p.relative_to(prefix)
        except ValueError as exc:
            raise InstallRefused(Reason.MALFORMED,
                                 f"bundle member {m.name!r} is outside {prefix}") from exc
        if not (m.isfile() or m.isdir() or m.issym()):
            raise InstallRefused(Reason.MALFORMED, f"bundle member {m.name!r} is not a file")
        if any(a in links for a in rel.parents):
            raise InstallRefused(Reason.MALFORMED, f"bundle member {m.name!r} is under a link")
        if m.issym():
            links.add(rel)
        if str(rel) != ".":
            out.append((m, str(rel)))
    return out


def unpack_bundle(bundle: Path, release_id: str, dest: Path) -> None:
    """Unpack the venv bundle's ``opt/mesh-agent/releases/<id>/`` into *dest*."""
    with tarfile.open(bundle, "r:*") as tar:
        members = _members(tar, release_id)
        for m, rel in members:
            target = dest / rel
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif m.issym():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(m.linkname, target)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                with src, open(target, "xb") as f:
                    shutil.copyfileobj(src, f)
                os.chmod(target, m.mode & 0o755)
        for m, rel in members:
            if m.isdir():
                os.chmod(dest / rel, (m.mode & 0o755) | 0o700)


def load_state(path: Path) -> InstalledState:
    return InstalledState.from_json(path.read_bytes()) if path.exists() else InstalledState()


def install(root: Path, state_path: Path, manifest_bytes: bytes,
            signatures: Sequence[Signature], trust: TrustPolicy, release_dir: Path, *,
            machine: str | None = None, allow_downgrade: bool = False,
            allow_wire_change: bool = False) -> Installed:
    """Verify the release in *release_dir* (the unpacked release, or a directory holding at
    least this machine's bundle at its manifest path) and install its agent bundle."""
    machine = machine or platform.machine()
    rel_path, rid = bundle_entry(manifest_bytes, machine)
    bundle = release_dir / rel_path
    if not bundle.is_file():
        raise InstallRefused(Reason.FILE_HASH, f"{rel_path} is missing")
    releases = Releases(root)
    current = releases.current_id()
    running_wire = None
    if current is not None and (releases.dir / current / "venv").is_dir():
        running_wire = releases.info(current).wire_version
    state = load_state(state_path)
    verdict = verify(manifest_bytes, signatures, trust, state, {rel_path: file_sha256(bundle)},
                     running_wire_version=running_wire, allow_downgrade=allow_downgrade,
                     allow_wire_change=allow_wire_change)
    if isinstance(verdict, Refuse):
        log.warning("release refused (%s): %s", verdict.reason, verdict.message)
        raise InstallRefused(verdict.reason, verdict.message)
    assert isinstance(verdict, Accept)
    final = releases.dir / rid
    already = (final / "venv").is_dir()
    if not already:
        releases.dir.mkdir(parents=True, exist_ok=True)
        incoming = releases.dir / f"{INCOMING_PREFIX}{rid}-{os.getpid()}"
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir(mode=0o755)
        try:
            unpack_bundle(bundle, rid, incoming)
            if not (incoming / "venv").is_dir():
                raise InstallRefused(Reason.MALFORMED, f"{rel_path} holds no venv")
            m = verdict.manifest
            info = {"id": rid, "version": m.version_text, "serial": m.serial,
                    "wire_version": m.wire_version, "signed_by": list(verdict.signed_by),
                    "git_commit": m.doc.get("git_commit"),
                    "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest()}
            (incoming / RELEASE_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
            (incoming / "manifest.json").write_bytes(manifest_bytes)
            os.rename(incoming, final)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
    state_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(state_path, verdict.state.to_json().encode())
    log.info("release %s (%s) %s, signed by %s", rid, verdict.manifest.version_text,
             "already installed" if already else "installed", ", ".join(verdict.signed_by))
    return Installed(rid, verdict.manifest.version_text, verdict.signed_by,
                     verdict.ignored_keys, already)
