"""playbooks/rollout.yml on a 4-node container lab: a good release rolls through every
wave; a broken one (its agent never becomes ready) fails the canary's gate, the canary
is rolled back, and every other node's release dirs, config and units are unchanged,
byte for byte.

Both releases are the lab's own agent bundle re-packed under a new release id and
version (the broken one with a readiness check that never holds), signed with
THROWAWAY keys made for this run, and rolled by meshcore-rollout (ansible-runner),
whose JSON report the assertions read.

Slow (a lab plus two rollouts, several minutes on 2 cores): runs under `make test-full`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mesh_agent import WIRE_VERSION
from meshcore_tools import ROOT, rollout
from meshcore_tools.lab.state import INVENTORY, container
from meshcore_tools.release import sign as signing

MACHINE = "x86_64"
HASHED = ("/opt/mesh-agent", "/etc/mesh-agent", "/etc/systemd/system/mesh-agent.service",
          "/etc/systemd/system/mesh-release-confirm.service")
BROKEN_READINESS = b'            "release_selftest": False,  # a deliberately broken release\n'


def make(*args: str, timeout: int = 3600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "PY_COLORS": "0"}
    return subprocess.run(["make", "-C", str(ROOT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def lab4() -> Any:
    res = make("lab", "NODES=4", "TOPOLOGY=grid")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    yield
    make("lab-destroy")


def repack(src: Path, old: str, new: str, version: str, broken: bool) -> bytes:
    """The bundle *src* (release *old*) as release *new* of *version*. Release ids have
    one length, so replacing the venv's absolute path in every file (shebangs,
    bytecode's file names) keeps the bytecode's strings whole."""
    assert len(old) == len(new)
    old_path, new_path = f"releases/{old}".encode(), f"releases/{new}".encode()
    out = io.BytesIO()
    with tarfile.open(src, "r:*") as tin, tarfile.open(fileobj=out, mode="w:gz") as tout:
        for m in tin.getmembers():
            name = m.name.replace(f"releases/{old}", f"releases/{new}")
            if "/mesh_agent/__pycache__/" in name and name.rsplit("/", 1)[1].split(".")[0] in (
                    "__init__", "view"):
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
            if broken and name.endswith("site-packages/mesh_agent/view.py"):
                anchor = b'            "routes_programmed": self.routes.last_sync_ok,\n'
                assert anchor in data, "view.readiness changed: update the broken release"
                data = data.replace(anchor, anchor + BROKEN_READINESS)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    return out.getvalue()


def release_tarball(out: Path, bundle: bytes, rid: str, version: str,
                    keys: list[Ed25519PrivateKey]) -> Path:
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
    for k in keys[:2]:
        signing.append_signature(out / f"{top}.manifest.json.sigs", signing.sign(manifest, k))
    return tgz


def on_node(node: str, script: str) -> str:
    return subprocess.run(["podman", "exec", container(node), "sh", "-c", script],
                          capture_output=True, text=True, check=True, timeout=300).stdout


def snapshot(node: str) -> str:
    """Every file's hash and every link's target under the node's release dirs, config
    and units."""
    paths = " ".join(HASHED)
    return on_node(node, f"find {paths} -type f -print0 | sort -z | xargs -0 sha256sum; "
                         f"find {paths} -type l -printf '%p -> %l\\n' | sort")


def current(node: str) -> str:
    return str(json.loads(on_node(node, "meshctl --json release list"))["current"])


def fake_bundle(tmp: Path, rid: str) -> Path:
    """A bundle shaped like scripts/agent-bundle.sh's, with the files repack() edits."""
    venv = f"opt/mesh-agent/releases/{rid}/venv"
    site = f"{venv}/lib/python3.11/site-packages/mesh_agent"
    files = {f"{venv}/bin/meshctl": f"#!/opt/mesh-agent/releases/{rid}/venv/bin/python\n",
             f"{site}/__init__.py": '__version__ = "0.1.0"\nWIRE_VERSION = 2\n',
             f"{site}/view.py": '        return {\n'
                                '            "routes_programmed": self.routes.last_sync_ok,\n'
                                '        }\n',
             f"{site}/__pycache__/view.cpython-311.opt-2.pyc": "stale",
             f"{site}/__pycache__/api.cpython-311.opt-2.pyc": "kept"}
    path = tmp / f"mesh-agent-{rid}.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return path


def test_the_lab_releases_are_whole_and_verify(tmp_path: Path) -> None:
    """Without a lab: the re-packed broken release and its tarball pass the controller's
    verifier, with the venv moved to the new id and readiness broken."""
    from mesh_agent.release.verify import Accept, TrustPolicy, parse_signatures

    old, new = "0" * 16, "b" * 16
    data = repack(fake_bundle(tmp_path, old), old, new, "90.0.2", broken=True)
    keys = [Ed25519PrivateKey.generate() for _ in range(3)]  # THROWAWAY
    tgz = release_tarball(tmp_path, data, new, "90.0.2", keys)
    trust = TrustPolicy.from_json(json.dumps({"threshold": 2, "keys": [
        {"name": f"t{i}", "public_key": base64.b64encode(signing.public_raw(k)).decode()}
        for i, k in enumerate(keys)]}))
    sigs = parse_signatures((tmp_path / "mesh-core-v90.0.2.manifest.json.sigs").read_text())
    verdict = signing.verify_release(
        tgz, sigs, trust, (tmp_path / "mesh-core-v90.0.2.manifest.json").read_bytes())
    assert isinstance(verdict, Accept), verdict
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = {m.name: (tar.extractfile(m) or io.BytesIO()).read() for m in tar if m.isfile()}
    site = f"opt/mesh-agent/releases/{new}/venv/lib/python3.11/site-packages/mesh_agent"
    assert got[f"opt/mesh-agent/releases/{new}/venv/bin/meshctl"].startswith(
        f"#!/opt/mesh-agent/releases/{new}/".encode())
    assert b'__version__ = "90.0.2"' in got[f"{site}/__init__.py"]
    assert BROKEN_READINESS in got[f"{site}/view.py"]
    assert sorted(n.rsplit("/", 1)[1] for n in got if "__pycache__" in n) == [
        "api.cpython-311.opt-2.pyc"]


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (podman, netns)")
@pytest.mark.skipif(shutil.which("podman") is None, reason="the lab needs podman")
def test_good_release_rolls_through_and_broken_canary_is_rolled_back(
        lab4: None, tmp_path: Path) -> None:
    inventory = yaml.safe_load(INVENTORY.read_text())
    nodes = list(inventory["all"]["children"]["mesh_nodes"]["hosts"])
    assert len(nodes) == 4
    info = json.loads((ROOT / "build/agent/bundle.json").read_text())
    src, old = ROOT / "build/agent" / info["bundle"], info["release"]
    keys = [Ed25519PrivateKey.generate() for _ in range(3)]  # THROWAWAY, this run only
    keys_file = tmp_path / "release-keys.json"
    keys_file.write_text(json.dumps({"threshold": 2, "keys": [
        {"name": f"throwaway{i}", "public_key": base64.b64encode(signing.public_raw(k)).decode()}
        for i, k in enumerate(keys)]}))
    good_id, bad_id = "a" * 16, "b" * 16
    good = release_tarball(tmp_path, repack(src, old, good_id, "90.0.1", broken=False),
                           good_id, "90.0.1", keys)
    bad = release_tarball(tmp_path, repack(src, old, bad_id, "90.0.2", broken=True),
                          bad_id, "90.0.2", keys)
    extra = {"mesh_rollout_serial": [1, "100%"], "rollout_soak_s": 15,
             "rollout_ready_timeout_s": 60}

    rc, report = rollout.run(INVENTORY, good, keys_file, extravars=extra, hosts_all=nodes)
    (tmp_path / "good.json").write_text(json.dumps(report, indent=2))
    assert rc == 0 and report["status"] == "completed", json.dumps(report, indent=2)[-4000:]
    assert [len(w["hosts"]) for w in report["waves"]] == [1, 3]
    good_waves_s = [w["duration_s"] for w in report["waves"]]
    assert all(current(n) == good_id for n in nodes)
    before = {n: snapshot(n) for n in nodes}

    rc, report = rollout.run(INVENTORY, bad, keys_file, extravars=extra, hosts_all=nodes)
    (tmp_path / "broken.json").write_text(json.dumps(report, indent=2))
    assert rc != 0 and report["status"] == "stopped", json.dumps(report, indent=2)[-4000:]
    (wave,) = report["waves"]
    canary = wave["hosts"][0]
    assert wave["status"] == "rolled_back" and wave["hosts"] == [canary]
    assert any("not ready" in f for f in wave["gate"]["failures"]), wave["gate"]
    assert report["hosts"][canary]["status"] == "rolled_back"
    assert current(canary) == good_id
    for n in nodes:
        if n != canary:
            assert report["hosts"][n]["status"] == "not_reached"
            assert snapshot(n) == before[n], f"{n} changed outside the canary wave"
    print(json.dumps({"good_waves_s": good_waves_s,
                      "canary_gate_after_switch_s": wave["gate_after_switch_s"]}))
