"""The releases installed on a node: list them, switch ``current``, prune old ones.

Layout (made by the ``mesh_agent`` role and by :mod:`.install`)::

    <root>/releases/<id>/venv/          the release's venv (its paths are absolute)
    <root>/releases/<id>/release.json   what the verified manifest said (absent for
                                        a release the role unpacked from a bundle)
    <root>/current -> releases/<id>/venv

Switching is one atomic step: a new symlink under a temporary name renamed over
``current`` (rename(2) replaces it, so ``current`` always names a whole
release), then the unit is restarted by a callable the caller passes in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RELEASE_INFO = "release.json"
INCOMING_PREFIX = ".incoming-"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_RE = re.compile(r'^__version__\s*=\s*"([^"]+)"', re.M)
_WIRE_RE = re.compile(r"^WIRE_VERSION\s*=\s*(\d+)", re.M)
_LINK_WIRE_RE = re.compile(r"^VERSION\s*=\s*(\d+)", re.M)


class ReleaseError(Exception):
    """A release operation refused; the message says why (and what would work)."""


@dataclass(frozen=True)
class ReleaseInfo:
    id: str
    version: str | None
    wire_version: int | None
    current: bool
    installed: float  # the release directory's ctime: when it was unpacked or renamed in
    verified: bool  # installed through the signed-manifest path (release.json present)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def valid_id(release_id: str) -> bool:
    return bool(_ID.match(release_id))


def package_facts(venv: Path) -> tuple[str | None, int | None]:
    """(agent version, wire version) read from a venv's installed ``mesh_agent`` sources,
    without running them. Releases older than ``WIRE_VERSION`` give the hello wire
    version from ``link/wire.py``."""
    for init in sorted(venv.glob("lib/python3*/site-packages/mesh_agent/__init__.py")):
        text = init.read_text(errors="replace")
        version = m.group(1) if (m := _VERSION_RE.search(text)) else None
        wire = int(w.group(1)) if (w := _WIRE_RE.search(text)) else None
        link = init.parent / "link" / "wire.py"
        if wire is None and link.exists():
            lw = _LINK_WIRE_RE.search(link.read_text(errors="replace"))
            wire = int(lw.group(1)) if lw else None
        return version, wire
    return None, None


class Releases:
    """The releases under *root* (``/opt/mesh-agent`` on a node)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.dir = self.root / "releases"
        self.current_link = self.root / "current"

    def current_id(self) -> str | None:
        try:
            target = os.readlink(self.current_link)
        except OSError:
            return None
        parts = Path(target).parts  # releases/<id>/venv (relative) or an absolute path
        if len(parts) >= 3 and parts[-1] == "venv" and parts[-3] == "releases":
            return parts[-2]
        return None

    def info(self, release_id: str) -> ReleaseInfo:
        d = self.dir / release_id
        if not valid_id(release_id) or not (d / "venv").is_dir():
            raise ReleaseError(self._unknown(release_id))
        version, wire, verified = None, None, False
        meta = d / RELEASE_INFO
        if meta.exists():
            try:
                doc = json.loads(meta.read_text())
                version, wire, verified = doc.get("version"), doc.get("wire_version"), True
            except ValueError:
                pass
        if version is None or wire is None:
            pv, pw = package_facts(d / "venv")
            version, wire = version or pv, wire if wire is not None else pw
        return ReleaseInfo(release_id, version, wire, release_id == self.current_id(),
                           d.stat().st_ctime, verified)

    def ids(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir()
                      if valid_id(p.name) and (p / "venv").is_dir())

    def installed(self) -> list[ReleaseInfo]:
        """Every installed release, oldest install first."""
        return sorted((self.info(i) for i in self.ids()), key=lambda r: (r.installed, r.id))

    def _unknown(self, release_id: str) -> str:
        known = ", ".join(self.ids()) or "none"
        return f"no release {release_id!r} under {self.dir} (installed: {known})"

    def use(self, release_id: str, restart: Callable[[], None], *,
            allow_wire_change: bool = False) -> tuple[str | None, str]:
        """Point ``current`` at *release_id* and restart: (previous id, new id).

        Refuses an unknown id, and a release of another (or unknown) wire version
        than the current one unless *allow_wire_change*. Switching to the current
        release changes nothing and restarts nothing."""
        target = self.info(release_id)
        previous = self.current_id()
        if previous == release_id:
            return previous, release_id
        if previous is not None and not allow_wire_change:
            cur = self.info(previous) if (self.dir / previous / "venv").is_dir() else None
            cur_wire = cur.wire_version if cur else None
            if target.wire_version is None or cur_wire is None:
                raise ReleaseError(
                    f"the wire version of {release_id if target.wire_version is None else previous}"
                    " is unknown; agents of different wire versions form no adjacency "
                    "(--allow-wire-change to switch anyway)")
            if target.wire_version != cur_wire:
                raise ReleaseError(
                    f"{release_id} speaks wire version {target.wire_version}, the current "
                    f"release {previous} {cur_wire}: agents of different wire versions form no "
                    "adjacency, upgrade the whole mesh together (--allow-wire-change)")
        tmp = self.root / f".current.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(f"releases/{release_id}/venv", tmp)
        os.replace(tmp, self.current_link)
        _fsync_dir(self.root)
        restart()
        return previous, release_id

    def prune(self, keep: int, *, protect: tuple[str, ...] = ()) -> list[str]:
        """Remove all but the current release, *protect* and the *keep* newest others;
        also leftover incoming directories of an interrupted install. Returns what went."""
        if keep < 0:
            raise ReleaseError("keep must be >= 0")
        current = self.current_id()
        others = [r for r in self.installed() if r.id != current and r.id not in protect]
        doomed = others[:max(0, len(others) - keep)]
        removed = []
        for r in doomed:
            shutil.rmtree(self.dir / r.id)
            removed.append(r.id)
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                if p.name.startswith(INCOMING_PREFIX):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p.name)
        return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
