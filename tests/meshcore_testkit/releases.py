"""Signed agent releases for tests: THROWAWAY keys, bundles re-packed under a new id.

What the rollout tests (tests/test_rollout_lab.py, tests/test_rollout_ssh.py,
tests/test_mesh_agent_verified.py) build a release tarball from: a bundle (the lab's
own, :func:`lab_bundle`, or :func:`fake_bundle`) moved to a new release id and version
by :func:`repack` (optionally with a readiness check that never holds), packed and
signed by :func:`release_tarball` the way meshcore-release lays a release out
(:func:`lab_release` does all three for the lab's bundle). Keys come from
:func:`throwaway_keys`, made per test run and never written anywhere but the test's
temporary directory.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mesh_agent import WIRE_VERSION
from meshcore_tools import ROOT
from meshcore_tools.release import sign as signing

MACHINE = "x86_64"
BROKEN_READINESS = b'            "release_selftest": False,  # a deliberately broken release\n'
_READINESS_ANCHOR = b'            "routes_programmed": self.routes.last_sync_ok,\n'
# A black-hole release: ready, with a full path table, but every route it installs is
# of type blackhole (RTN_BLACKHOLE 6, without its nexthop group), so the node drops
# what it sends and what it should forward to the mesh.
BLACKHOLE = 6
_BLACKHOLE_EDITS = (
    (b"    kind, scope = (RTN_UNICAST, RT_SCOPE_UNIVERSE) if nh_id is not None else (0, 0)\n",
     f"    kind, scope = ({BLACKHOLE}, RT_SCOPE_UNIVERSE) if nh_id is not None else (0, 0)"
     "  # a deliberately black-holing release\n".encode()),
    (b"    if nh_id is not None:\n        body += _u32(RTA_NH_ID, nh_id)\n",
     b"    if nh_id is not None and False:  # a deliberately black-holing release\n"
     b"        body += _u32(RTA_NH_ID, nh_id)\n"),
)
# source files (under site-packages/mesh_agent/) -> edits, per kind of broken release
_EDITS: dict[str, dict[str, tuple[tuple[bytes, bytes], ...]]] = {
    "broken": {"view.py": ((_READINESS_ANCHOR, _READINESS_ANCHOR + BROKEN_READINESS),)},
    "blackhole": {"routes/netlink.py": _BLACKHOLE_EDITS}}


def throwaway_keys(n: int = 3) -> list[Ed25519PrivateKey]:
    """THROWAWAY Ed25519 keys for one test run."""
    return [Ed25519PrivateKey.generate() for _ in range(n)]


def keys_json(keys: list[Ed25519PrivateKey], threshold: int = 2) -> str:
    """The trusted-keys file (release-keys.json) for *keys*."""
    return json.dumps({"threshold": threshold, "keys": [
        {"name": f"throwaway{i}", "public_key": base64.b64encode(signing.public_raw(k)).decode()}
        for i, k in enumerate(keys)]})


def repack(src: Path, old: str, new: str, version: str, broken: bool = False,
           blackhole: bool = False) -> bytes:
    """The bundle *src* (release *old*) as release *new* of *version*; *broken*: its
    readiness never holds; *blackhole*: ready, but every route it installs is a
    blackhole. Release ids have one length, so replacing the venv's absolute path in
    every file (shebangs, bytecode's file names) keeps the bytecode's strings whole;
    the bytecode of every edited source is left out."""
    assert len(old) == len(new)
    edits: dict[str, tuple[tuple[bytes, bytes], ...]] = {"__init__.py": ()}
    for kind, wanted in (("broken", broken), ("blackhole", blackhole)):
        if wanted:
            edits.update(_EDITS[kind])
    # site-packages/mesh_agent/routes/netlink.py -> .../routes/__pycache__/netlink.
    stale = tuple("site-packages/mesh_agent/" + "/".join(
        [*e.split("/")[:-1], "__pycache__", e.split("/")[-1].removesuffix(".py") + "."])
        for e in edits)
    old_path, new_path = f"releases/{old}".encode(), f"releases/{new}".encode()
    out = io.BytesIO()
    with tarfile.open(src, "r:*") as tin, tarfile.open(fileobj=out, mode="w:gz") as tout:
        for m in tin.getmembers():
            name = m.name.replace(f"releases/{old}", f"releases/{new}")
            if any(prefix in name for prefix in stale):
                continue  # their sources change below
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = m.type, m.mode, m.mtime
            info.uid = info.gid = 0
            if m.issym() or m.islnk():
                info.linkname = m.linkname.replace(f"releases/{old}", f"releases/{new}")
                tout.addfile(info)
                continue
            if not m.isfile():
                tout.addfile(info)
                continue
            f = tin.extractfile(m)
            data = (f.read() if f else b"").replace(old_path, new_path)
            if name.endswith("site-packages/mesh_agent/__init__.py"):
                lines = [f'__version__ = "{version}"'.encode() if ln.startswith(b"__version__")
                         else ln for ln in data.split(b"\n")]
                data = b"\n".join(lines)
            for source, changes in edits.items():
                if name.endswith(f"site-packages/mesh_agent/{source}"):
                    for before, after in changes:
                        assert before in data, f"{source} changed: update the broken release"
                        data = data.replace(before, after)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    return out.getvalue()


def release_tarball(out: Path, bundle: bytes, rid: str, version: str,
                    keys: list[Ed25519PrivateKey], signers: int = 2) -> Path:
    """A release tarball shaped like meshcore-release's: manifest, SHA256SUMS, the bundle;
    the detached manifest and its signatures (2 of the THROWAWAY keys) beside it."""
    path = f"agent/bundles/{MACHINE}/mesh-agent-{rid}.tgz"
    digest = hashlib.sha256(bundle).hexdigest()
    manifest = json.dumps({"schema": 1, "name": "mesh-core", "version": version, "serial": 1,
                           "wire_version": WIRE_VERSION, "files": {path: digest},
                           "agent": {"bundles": {MACHINE: {"path": path, "release": rid}}}},
                          sort_keys=True).encode()
    sums = (f"{hashlib.sha256(manifest).hexdigest()}  manifest.json\n{digest}  {path}\n").encode()
    top = f"mesh-core-v{version}"
    tgz = out / f"{top}.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, data in (("manifest.json", manifest), ("SHA256SUMS", sums), (path, bundle)):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    (out / f"{top}.manifest.json").write_bytes(manifest)
    for k in keys[:signers]:
        signing.append_signature(out / f"{top}.manifest.json.sigs", signing.sign(manifest, k))
    return tgz


def lab_bundle() -> tuple[Path, str]:
    """The lab's own agent bundle (make agent-bundle: build/agent/bundle.json) and its
    release id, which :func:`lab_release` re-packs."""
    info = json.loads((ROOT / "build/agent/bundle.json").read_text())
    return ROOT / "build/agent" / info["bundle"], str(info["release"])


def lab_release(out: Path, rid: str, version: str, keys: list[Ed25519PrivateKey],
                broken: bool = False, blackhole: bool = False) -> Path:
    """The lab's agent bundle re-packed as release *rid* of *version* (:func:`repack`,
    *broken* and *blackhole* as there), packed and signed into *out*
    (:func:`release_tarball`): what the lab rollout tests roll."""
    src, old = lab_bundle()
    data = repack(src, old, rid, version, broken=broken, blackhole=blackhole)
    return release_tarball(out, data, rid, version, keys)


def fake_bundle(tmp: Path, rid: str) -> Path:
    """A bundle shaped like scripts/agent-bundle.sh's, with the files repack() edits."""
    venv = f"opt/mesh-agent/releases/{rid}/venv"
    site = f"{venv}/lib/python3.11/site-packages/mesh_agent"
    files = {f"{venv}/bin/meshctl": f"#!/opt/mesh-agent/releases/{rid}/venv/bin/python\n",
             f"{site}/__init__.py": '__version__ = "0.1.0"\nWIRE_VERSION = 2\n',
             f"{site}/view.py": '        return {\n'
                                '            "routes_programmed": self.routes.last_sync_ok,\n'
                                '        }\n',
             f"{site}/routes/netlink.py": "".join(
                 e[0].decode() for e in _BLACKHOLE_EDITS),
             f"{site}/__pycache__/view.cpython-311.opt-2.pyc": "stale",
             f"{site}/routes/__pycache__/netlink.cpython-311.opt-2.pyc": "stale",
             f"{site}/__pycache__/api.cpython-311.opt-2.pyc": "kept"}
    path = tmp / f"mesh-agent-{rid}.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return path


