"""Build ``build/release/mesh-core-vX.Y.Z.tgz``: what a release holds, and the manifest.

The tarball holds, under ``mesh-core-vX.Y.Z/``:

- ``agent/mesh_agent-X.Y.Z-py3-none-any.whl``: the agent wheel, built from the
  committed agent sources copied to a temporary directory (no stale build/ tree);
- ``agent/bundles/<machine>/mesh-agent-<id>.tgz``: the per-architecture agent bundles
  (x86_64 from ``make agent-bundle``, aarch64 from ``make image-rpi``) when they were
  built; the manifest says which are absent and why (``--require-bundles`` fails
  instead);
- ``ansible/``: the roles, playbooks, filter plugins, ansible.cfg and
  collections/requirements.yml, as tracked by git;
- ``sbom/``: CycloneDX SBOMs (:mod:`.sbom`);
- ``manifest.json`` (version, serial, wire version, git commit, build inputs, every
  file's SHA-256) and ``SHA256SUMS`` (every file, the manifest included).

Beside it in ``build/release/``: a copy of the manifest (what maintainers sign) and
``SHA256SUMS`` of the tarball and that manifest. The version has one owner: the
agent's ``files/mesh_agent/pyproject.toml``.

Reproducible: everything derives from the commit and SOURCE_DATE_EPOCH (default: the
commit's time), with no build time or host name, and the archive is packed by
:func:`.tarball.reproducible_tgz`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mesh_agent.release.verify import MANIFEST_SCHEMA, parse_version

from meshcore_tools.release import sbom
from meshcore_tools.release.tarball import Entry, reproducible_tgz

ANSIBLE_PATHS = ("ansible.cfg", "collections/requirements.yml", "playbooks", "plugins", "roles")
AGENT_DIR = "files/mesh_agent"
BUILD_PINS = "requirements/release-build.txt"  # the wheel's build backend, pinned
# machine -> (bundle manifest written by scripts/agent-bundle.sh, how to build it)
BUNDLES: Mapping[str, tuple[str, str]] = {
    "x86_64": ("build/agent/bundle.json", "make agent-bundle"),
    "aarch64": ("build/images/rpi-arm64/agent-bundle.json", "make image-rpi"),
}
IMAGE_DIR = "build/images/rpi-arm64"  # its out-*/manifest.json lists the image's packages
_VERSION_RE = re.compile(rb'^__version__\s*=\s*"([^"]+)"', re.M)
_WIRE_RE = re.compile(rb"^WIRE_VERSION\s*=\s*(\d+)", re.M)


class BuildError(Exception):
    pass


@dataclass
class Built:
    tarball: Path
    sha256: str
    size: int
    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          check=True).stdout


def tracked(root: Path, *paths: str) -> list[tuple[str, bool]]:
    """(path, executable) of every tracked file under *paths*, present in the work tree."""
    out = []
    for line in git(root, "ls-files", "-s", "-z", "--", *paths).split("\0"):
        if not line:
            continue
        meta, name = line.split("\t", 1)
        mode = meta.split()[0]
        if mode == "160000" or not (root / name).is_file():
            continue  # a submodule, or deleted in the work tree
        out.append((name, mode == "100755"))
    return sorted(out)


def agent_version(root: Path) -> str:
    doc = tomllib.loads((root / AGENT_DIR / "pyproject.toml").read_text())
    version = str(doc["project"]["version"])
    parse_version(version)
    return version


def source_wire_version(root: Path) -> int:
    m = _WIRE_RE.search((root / AGENT_DIR / "mesh_agent/__init__.py").read_bytes())
    if not m:
        raise BuildError("no WIRE_VERSION in mesh_agent/__init__.py")
    return int(m.group(1))


def build_wheel(root: Path, epoch: int) -> tuple[str, bytes]:
    with tempfile.TemporaryDirectory(prefix="meshcore-release-") as tmp:
        src = Path(tmp, "src")
        for name, _ in tracked(root, AGENT_DIR):
            rel = Path(name).relative_to(AGENT_DIR)
            if rel.parts[0] == "tests":
                continue
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / name, src / rel)
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "PYTHONHASHSEED": "0",
               "PIP_CONSTRAINT": str(root / BUILD_PINS)}
        res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                              "--disable-pip-version-check", "-w", str(Path(tmp, "out")),
                              str(src)], env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise BuildError(f"pip wheel failed: {res.stderr.strip()[-2000:]}")
        (wheel,) = Path(tmp, "out").glob("*.whl")
        return wheel.name, wheel.read_bytes()


def bundle_facts(data: bytes, release: str) -> tuple[str | None, int | None]:
    """(agent version, wire version) of the venv packed in a bundle."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar:
            if m.isfile() and m.name.endswith("site-packages/mesh_agent/__init__.py") \
                    and f"/releases/{release}/" in f"/{m.name}":
                f = tar.extractfile(m)
                text = f.read() if f else b""
                v, w = _VERSION_RE.search(text), _WIRE_RE.search(text)
                return (v.group(1).decode() if v else None, int(w.group(1)) if w else None)
    return None, None


def find_bundles(root: Path, version: str, wire: int, require: bool,
                 notes: list[str]) -> tuple[dict[str, Any], list[Entry]]:
    bundles: dict[str, Any] = {}
    entries: list[Entry] = []
    for machine, (manifest_rel, how) in sorted(BUNDLES.items()):
        mpath = root / manifest_rel
        if not mpath.is_file():
            why = f"not built: no {manifest_rel} ({how})"
            if require:
                raise BuildError(f"{machine} agent bundle {why}")
            bundles[machine] = {"absent": why}
            notes.append(f"{machine} bundle absent ({how} builds it)")
            continue
        info = json.loads(mpath.read_text())
        data = (mpath.parent / info["bundle"]).read_bytes()
        bversion, bwire = bundle_facts(data, info["release"])
        if bversion != version or bwire != wire:
            raise BuildError(
                f"{machine} bundle {info['bundle']} holds agent {bversion} wire {bwire}, the "
                f"sources are {version} wire {wire}: rebuild it ({how})")
        path = f"agent/bundles/{machine}/{info['bundle']}"
        bundles[machine] = {"path": path, "release": info["release"], "machine": machine,
                            "built_in": info.get("image"), "wire_version": bwire}
        entries.append(Entry(path, data))
    return bundles, entries


def image_packages(root: Path, bundles: Mapping[str, Any]) -> tuple[Any, str | None]:
    """The rpi-arm64 image manifest built with this release's aarch64 bundle, or why not."""
    arm = bundles.get("aarch64", {})
    if "release" not in arm:
        return None, "no aarch64 agent bundle, so no matching rpi-arm64 image"
    for m in sorted((root / IMAGE_DIR).glob("*/manifest.json")):
        doc = json.loads(m.read_text())
        if doc.get("agent_bundle") == arm["release"] and doc.get("packages"):
            return doc, None
    return None, (f"no {IMAGE_DIR}/*/manifest.json built with bundle {arm['release']} "
                  "(make image-rpi)")


def build(root: Path, out_dir: Path, *, epoch: int | None = None, serial: int | None = None,
          require_bundles: bool = False, python_sbom: bool = True) -> Built:
    root = root.resolve()
    version = agent_version(root)
    wire = source_wire_version(root)
    commit = git(root, "rev-parse", "HEAD").strip()
    if epoch is None:
        env_epoch = os.environ.get("SOURCE_DATE_EPOCH")
        epoch = int(env_epoch) if env_epoch else int(git(root, "log", "-1", "--format=%ct"))
    dirty = bool(git(root, "status", "--porcelain", "--", *ANSIBLE_PATHS, AGENT_DIR).strip())
    notes: list[str] = []
    if dirty:
        notes.append("the work tree has uncommitted changes in what the release packs")
    files: list[Entry] = []
    for name, exe in tracked(root, *ANSIBLE_PATHS):
        files.append(Entry(f"ansible/{name}", (root / name).read_bytes(), exe))
    wheel_name, wheel = build_wheel(root, epoch)
    files.append(Entry(f"agent/{wheel_name}", wheel))
    bundles, bundle_entries = find_bundles(root, version, wire, require_bundles, notes)
    files += bundle_entries
    sboms: dict[str, Any] = {}
    if python_sbom:
        files.append(Entry("sbom/python-agent.cdx.json",
                           sbom.python_sbom(root / AGENT_DIR / "pyproject.toml")))
        sboms["python"] = "sbom/python-agent.cdx.json"
    else:
        sboms["python"] = {"absent": "skipped (--no-python-sbom)"}
    image_doc, why = image_packages(root, bundles)
    if image_doc is not None:
        files.append(Entry("sbom/debian-image.cdx.json", sbom.debian_sbom(image_doc, epoch)))
        sboms["debian"] = "sbom/debian-image.cdx.json"
    else:
        sboms["debian"] = {"absent": why}
        notes.append(f"Debian SBOM absent: {why}")
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "name": "mesh-core",
        "version": version,
        "serial": epoch if serial is None else serial,
        "wire_version": wire,
        "git_commit": commit,
        "git_dirty": dirty,
        "source_date_epoch": epoch,
        "agent": {"version": version, "wire_version": wire, "wheel": f"agent/{wheel_name}",
                  "bundles": bundles},
        "sbom": sboms,
        "build_inputs": {
            "python": platform.python_version(),
            "requirements_sha256": sha256((root / "requirements/dev.txt").read_bytes()),
            "wheel_build_pins": [x for x in (root / BUILD_PINS).read_text().splitlines()
                                 if x and not x.startswith("#")],
            "cyclonedx_bom": metadata.version("cyclonedx-bom"),
            "paths": [*ANSIBLE_PATHS, AGENT_DIR],
        },
        "files": {e.name: sha256(e.data) for e in sorted(files, key=lambda e: e.name)},
    }
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    files.append(Entry("manifest.json", manifest_bytes))
    sums = "".join(f"{sha256(e.data)}  {e.name}\n" for e in sorted(files, key=lambda e: e.name))
    files.append(Entry("SHA256SUMS", sums.encode()))
    top = f"mesh-core-v{version}"
    tgz = reproducible_tgz([Entry(f"{top}/{e.name}", e.data, e.executable) for e in files], epoch)
    out_dir.mkdir(parents=True, exist_ok=True)
    tarball = out_dir / f"{top}.tgz"
    detached = out_dir / f"{top}.manifest.json"
    sigs = out_dir / f"{top}.manifest.json.sigs"
    if sigs.exists() and (not detached.exists() or detached.read_bytes() != manifest_bytes):
        sigs.unlink()
        notes.append(f"removed {sigs.name}: it signed another manifest")
    tarball.write_bytes(tgz)
    detached.write_bytes(manifest_bytes)
    (out_dir / "SHA256SUMS").write_text(
        f"{sha256(tgz)}  {tarball.name}\n{sha256(manifest_bytes)}  {detached.name}\n")
    return Built(tarball, sha256(tgz), len(tgz), manifest, notes)
