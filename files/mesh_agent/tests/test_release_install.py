"""Installing a signed release on a node, and `meshctl release list|use|prune|install`.

On a temporary install root: no systemd (the restart is a callable the test passes),
no root. Keys are THROWAWAY keys generated per test; none is committed."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mesh_agent.ctl import release as release_ctl
from mesh_agent.ctl.main import build_parser
from mesh_agent.ctl.main import main as meshctl
from mesh_agent.release import install as install_mod
from mesh_agent.release.install import InstallRefused, install
from mesh_agent.release.store import ReleaseError, Releases
from mesh_agent.release.verify import (
    InstalledState,
    Signature,
    TrustPolicy,
    key_id,
    sha256_hex,
)

MACHINE = "x86_64"


def raw(k: Ed25519PrivateKey) -> bytes:
    return k.public_key().public_bytes(serialization.Encoding.Raw,
                                       serialization.PublicFormat.Raw)


def bundle_bytes(rid: str, version: str = "1.0.0", wire: int = 2,
                 extra: list[tarfile.TarInfo] | None = None) -> bytes:
    """A bundle shaped like scripts/agent-bundle.sh's: a venv under its final path."""
    base = f"opt/mesh-agent/releases/{rid}/venv"
    init = f'__version__ = "{version}"\nWIRE_VERSION = {wire}\n'.encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for d in ("opt", "opt/mesh-agent", "opt/mesh-agent/releases",
                  f"opt/mesh-agent/releases/{rid}", base, f"{base}/bin"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        link = tarfile.TarInfo(f"{base}/bin/python")
        link.type, link.linkname = tarfile.SYMTYPE, "/usr/bin/python3"
        tar.addfile(link)
        for name, data in ((f"{base}/lib/python3.11/site-packages/mesh_agent/__init__.py", init),
                           (f"{base}/.meshcore-installed", b"")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size))
    return out.getvalue()


class Fleet:
    """THROWAWAY maintainer keys (2 of 3) and a node's install root and state dir."""

    def __init__(self, tmp: Path) -> None:
        self.keys = [Ed25519PrivateKey.generate() for _ in range(3)]
        self.trust = TrustPolicy.from_json(json.dumps({"threshold": 2, "keys": [
            {"name": f"maint{i}", "public_key": base64.b64encode(raw(k)).decode()}
            for i, k in enumerate(self.keys)]}))
        self.root = tmp / "opt-mesh-agent"
        self.state = tmp / "state" / install_mod.STATE_FILE
        self.tmp = tmp

    def release(self, rid: str, version: str, serial: int = 1, wire: int = 2,
                tamper: bool = False, bundle: bytes | None = None) -> tuple[Path, bytes]:
        d = self.tmp / f"rel-{rid}-{serial}"
        path = f"agent/bundles/{MACHINE}/mesh-agent-{rid}.tgz"
        data = bundle if bundle is not None else bundle_bytes(rid, version, wire)
        (d / path).parent.mkdir(parents=True, exist_ok=True)
        (d / path).write_bytes(data + (b"\0" if tamper else b""))
        doc = {"schema": 1, "name": "mesh-core", "version": version, "serial": serial,
               "wire_version": wire, "files": {path: sha256_hex(data)},
               "agent": {"bundles": {MACHINE: {"path": path, "release": rid}}}}
        return d, json.dumps(doc, sort_keys=True).encode()

    def sigs(self, data: bytes, n: int = 2) -> list[Signature]:
        return [Signature(key_id(raw(k)), k.sign(data)) for k in self.keys[:n]]

    def install(self, d: Path, data: bytes, n: int = 2, **flags: bool) -> install_mod.Installed:
        return install(self.root, self.state, data, self.sigs(data, n), self.trust, d,
                       machine=MACHINE, **flags)

    def leftovers(self) -> list[str]:
        rel = self.root / "releases"
        return sorted(p.name for p in rel.iterdir()) if rel.exists() else []


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)


def test_a_verified_release_is_renamed_in_whole(fleet: Fleet) -> None:
    d, m = fleet.release("r1", "1.0.0")
    done = fleet.install(d, m)
    assert (done.release_id, done.version, done.already) == ("r1", "1.0.0", False)
    venv = fleet.root / "releases/r1/venv"
    assert (venv / "bin/python").readlink() == Path("/usr/bin/python3")
    assert fleet.leftovers() == ["r1"]
    info = json.loads((fleet.root / "releases/r1/release.json").read_text())
    assert info["wire_version"] == 2 and info["signed_by"] == ["maint0", "maint1"]
    state = InstalledState.from_json(fleet.state.read_bytes())
    assert state.highest_version == (1, 0, 0) and state.serials == {"1.0.0": 1}
    assert fleet.install(d, m).already


@pytest.mark.parametrize("case,reason", [
    ("one signature", "too_few_signatures"),
    ("tampered bundle", "file_hash"),
    ("downgrade", "downgrade"),
    ("replay", "replay"),
    ("wire change", "wire_version"),
])
def test_refusals_leave_nothing_behind(fleet: Fleet, case: str, reason: str) -> None:
    d, m = fleet.release("r2", "2.0.0", serial=5)
    fleet.install(d, m)
    Releases(fleet.root).use("r2", lambda: None)
    before = (fleet.leftovers(), fleet.state.read_bytes())
    n = 2
    if case == "one signature":
        d, m = fleet.release("r3", "2.1.0")
        n = 1
    elif case == "tampered bundle":
        d, m = fleet.release("r3", "2.1.0", tamper=True)
    elif case == "downgrade":
        d, m = fleet.release("r3", "1.9.0")
    elif case == "replay":
        d, m = fleet.release("r3", "2.0.0", serial=4)
    else:
        d, m = fleet.release("r3", "3.0.0", wire=3)
    with pytest.raises(InstallRefused) as err:
        fleet.install(d, m, n)
    assert err.value.reason == reason
    assert (fleet.leftovers(), fleet.state.read_bytes()) == before


def test_a_crash_while_unpacking_leaves_no_release(fleet: Fleet,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    d, m = fleet.release("r4", "1.0.0")
    real = install_mod.shutil.copyfileobj
    calls = []

    def fail_on_second(src, dst, *a):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst, *a)

    monkeypatch.setattr(install_mod.shutil, "copyfileobj", fail_on_second)
    with pytest.raises(OSError):
        fleet.install(d, m)
    assert fleet.leftovers() == [] and not fleet.state.exists()


def test_members_that_escape_or_write_through_a_link_are_refused(fleet: Fleet) -> None:
    base = "opt/mesh-agent/releases/r5/venv"
    evil = [tarfile.TarInfo("opt/mesh-agent/releases/r5/../../../etc/evil"),
            tarfile.TarInfo("etc/cron.d/evil"), tarfile.TarInfo(f"{base}/bin/python/x")]
    for info in evil:
        info.size = 1
        d, m = fleet.release("r5", "1.0.0", bundle=bundle_bytes("r5", extra=[info]))
        with pytest.raises(InstallRefused) as err:
            fleet.install(d, m)
        assert err.value.reason == "malformed", info.name
        assert fleet.leftovers() == []


def test_use_switches_current_atomically_and_restarts(fleet: Fleet) -> None:
    for rid, v in (("r1", "1.0.0"), ("r2", "1.1.0")):
        fleet.install(*fleet.release(rid, v))
    rel = Releases(fleet.root)
    restarts: list[str] = []
    assert rel.use("r1", lambda: restarts.append("r1")) == (None, "r1")
    assert rel.use("r2", lambda: restarts.append("r2")) == ("r1", "r2")
    assert rel.use("r2", lambda: restarts.append("again")) == ("r2", "r2")
    assert restarts == ["r1", "r2"]
    assert (fleet.root / "current").readlink() == Path("releases/r2/venv")
    assert not list(fleet.root.glob(".current*"))
    with pytest.raises(ReleaseError, match=r"no release 'r9'.*installed: r1, r2"):
        rel.use("r9", lambda: restarts.append("r9"))
    with pytest.raises(ReleaseError):
        rel.use("../r1", lambda: None)
    assert restarts == ["r1", "r2"]


def test_use_refuses_another_wire_version_without_the_flag(fleet: Fleet) -> None:
    fleet.install(*fleet.release("r1", "1.0.0"))
    fleet.install(*fleet.release("w3", "2.0.0", wire=3), allow_wire_change=True)
    rel = Releases(fleet.root)
    rel.use("r1", lambda: None)
    with pytest.raises(ReleaseError, match=r"wire version 3.*form no adjacency"):
        rel.use("w3", lambda: None)
    assert rel.current_id() == "r1"
    rel.use("w3", lambda: None, allow_wire_change=True)
    assert rel.current_id() == "w3"


def test_a_role_installed_release_reads_its_facts_from_the_venv(fleet: Fleet) -> None:
    with tarfile.open(fileobj=io.BytesIO(bundle_bytes("b1", "0.9.0", 2))) as tar:
        tar.extractall(fleet.tmp / "fs", filter="tar")
    (fleet.root).mkdir(parents=True)
    (fleet.tmp / "fs/opt/mesh-agent/releases").rename(fleet.root / "releases")
    info = Releases(fleet.root).info("b1")
    assert (info.version, info.wire_version, info.verified) == ("0.9.0", 2, False)


def test_prune_keeps_current_and_the_newest_others(fleet: Fleet) -> None:
    import os
    import time
    for i in range(5):
        fleet.install(*fleet.release(f"r{i}", f"1.{i}.0"))
        os.utime(fleet.root / f"releases/r{i}", (time.time(), time.time()))
        time.sleep(0.01)  # ctime orders installs
    (fleet.root / "releases/.incoming-rx-1").mkdir()
    rel = Releases(fleet.root)
    rel.use("r1", lambda: None)
    removed = rel.prune(2)
    assert sorted(removed) == [".incoming-rx-1", "r0", "r2"]
    assert fleet.leftovers() == ["r1", "r3", "r4"]
    assert rel.prune(0, protect=("r3",)) == ["r4"]


def cli(fleet: Fleet, *argv: str, restart=None) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    args = build_parser().parse_args(["--json", "release", "--root", str(fleet.root), *argv])
    out = io.StringIO()
    code = release_ctl.run(args, out, restart or (lambda: None))
    return code, out.getvalue()


def test_meshctl_release_commands(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    d, m = fleet.release("r1", "1.0.0")
    (d / "manifest.json").write_bytes(m)
    sigs = fleet.tmp / "sigs"
    sigs.write_text("".join(s.line() + "\n" for s in fleet.sigs(m)))
    keys = fleet.tmp / "keys.json"
    keys.write_text(fleet.trust.to_json())
    code, out = cli(fleet, "install", str(d), "--signatures", str(sigs), "--keys", str(keys),
                    "--state-dir", str(fleet.state.parent))
    assert code == 0 and json.loads(out)["release"] == "r1"
    restarted = []
    code, out = cli(fleet, "use", "r1", restart=lambda: restarted.append(1))
    assert code == 0 and json.loads(out) == {"previous": None, "current": "r1", "changed": True,
                                             "confirm_within": None}  # nothing to revert to
    assert restarted == [1]
    code, out = cli(fleet, "list")
    assert json.loads(out)["current"] == "r1"
    assert json.loads(out)["releases"][0]["verified"] is True
    code, _ = cli(fleet, "use", "nope")
    assert code == 1 and "no release 'nope'" in capsys.readouterr().err
    sigs.write_text(fleet.sigs(m, 1)[0].line() + "\n")
    d2, m2 = fleet.release("r2", "2.0.0")
    (d2 / "manifest.json").write_bytes(m2)
    code, out = cli(fleet, "install", str(d2), "--signatures", str(sigs), "--keys", str(keys),
                    "--state-dir", str(fleet.state.parent))
    assert code == 1 and json.loads(out)["refused"] == "too_few_signatures"
    assert "release refused (too_few_signatures)" in capsys.readouterr().err
    assert meshctl(["release", "--root", str(fleet.root), "prune", "--keep", "0"]) == 0


def test_a_refusal_reaches_the_journal(fleet: Fleet) -> None:
    import logging
    import socket

    sock_path = fleet.tmp / "log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(5)
    logger = logging.getLogger("mesh_agent.release")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        release_ctl.log_to_syslog(sock_path)
        d, m = fleet.release("r1", "1.0.0", tamper=True)
        with pytest.raises(InstallRefused):
            fleet.install(d, m)
        line = sock.recv(4096).decode()
        assert "meshctl[" in line and "release refused (file_hash)" in line
    finally:
        for h in logger.handlers:
            h.close()
        logger.handlers[:], logger.level, logger.propagate = saved
        sock.close()


# ".." and absolute names are rare: one such member refuses the whole bundle.
segment = st.sampled_from(["x", "y", "venv", ".", "", "x", "y", "r7", ".."])
PREFIX = ["opt", "mesh-agent", "releases", "r7"]  # the release's own directory in a bundle


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.tuples(st.one_of(st.lists(segment, min_size=1, max_size=4).map(
                                    lambda s: PREFIX + s), st.lists(segment, min_size=1,
                                                                    max_size=6)),
                                st.integers(0, 9).map(lambda n: n == 0),
                                st.sampled_from(["file", "dir", "sym"])),
                      max_size=6))
@example(names=[([*PREFIX, "x"], False, "sym"), ([*PREFIX, "x", "y"], False, "file")])
def test_no_member_lands_outside_the_release(tmp_path: Path, names) -> None:  # type: ignore[no-untyped-def]
    """Whatever the member names, unpacking writes only under the incoming directory, and
    never through a link it made (links point at a sentinel directory here)."""
    import contextlib
    import uuid
    work = tmp_path / uuid.uuid4().hex
    dest, sentinel = work / "dest", work / "sentinel"
    dest.mkdir(parents=True)
    sentinel.mkdir()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for parts, absolute, kind in names:
            info = tarfile.TarInfo(("/" if absolute else "") + "/".join(parts))
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, str(sentinel)
            tar.addfile(info, io.BytesIO(b""))
    bundle = work / "b.tar"
    bundle.write_bytes(out.getvalue())
    with contextlib.suppress(InstallRefused, FileExistsError, IsADirectoryError,
                             NotADirectoryError, FileNotFoundError):
        install_mod.unpack_bundle(bundle, "r7", dest)
    outside = [p for p in work.rglob("*")
               if p not in (bundle, sentinel) and dest not in (p, *p.parents)]
    assert outside == []


def test_meshctl_release_list_and_use_as_text(fleet: Fleet) -> None:
    fleet.install(*fleet.release("r1", "1.0.0"))
    args = build_parser().parse_args(["release", "--root", str(fleet.root), "list"])
    out = io.StringIO()
    assert release_ctl.run(args, out) == 0
    header, row = out.getvalue().splitlines()[:2]
    assert header.split() == ["RELEASE", "VERSION", "WIRE", "VERIFIED", "INSTALLED"]
    assert row.split()[:4] == ["r1", "1.0.0", "2", "yes"]
    args = build_parser().parse_args(["release", "--root", str(fleet.root), "use", "r1"])
    out = io.StringIO()
    assert release_ctl.run(args, out, lambda: None) == 0
    assert out.getvalue().strip() == "current: r1 (was none), agent restarted"
