"""The release tarball (meshcore_tools.release): reproducible, complete, signed k of n.

Each build runs in a checkout of its own: the release's inputs exported from HEAD
(git archive) and committed with fixed dates, so two checkouts hold one commit.
Signing keys are THROWAWAY keys generated in the test's temporary directory."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from meshcore_tools.release import cli
from meshcore_tools.release.build import ANSIBLE_PATHS, BUILD_PINS, BuildError, build
from meshcore_tools.release.tarball import Entry, reproducible_tgz

ROOT = Path(__file__).resolve().parents[1]
EPOCH = 1_764_806_400  # 2025-12-04, fixed
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
           "GIT_AUTHOR_DATE": f"@{EPOCH} +0000", "GIT_COMMITTER_DATE": f"@{EPOCH} +0000"}


def checkout(dest: Path) -> Path:
    """HEAD's release inputs as a one-commit repository at *dest*."""
    dest.mkdir(parents=True)
    paths = [*ANSIBLE_PATHS, "files/mesh_agent", "requirements/dev.txt", BUILD_PINS]
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "--", *paths],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    env = {**os.environ, **GIT_ENV}
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "release inputs"]):
        subprocess.run(["git", "-C", str(dest), *argv], check=True, env=env,
                       capture_output=True)
    return dest


def members(tgz: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(tgz) as tar:
        return {m.name: m for m in tar.getmembers()}


def read(tgz: Path, name: str) -> bytes:
    with tarfile.open(tgz) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    base = tmp_path_factory.mktemp("repro")
    a = checkout(base / "a")
    time.sleep(1.1)  # the second checkout's files get other mtimes
    b = checkout(base / "b")
    (b / "roles").touch()
    os.environ.pop("SOURCE_DATE_EPOCH", None)
    start = time.monotonic()
    ra = build(a, base / "out-a")
    wall = time.monotonic() - start
    rb = build(b, base / "out-b")
    assert ra.manifest["source_date_epoch"] == EPOCH  # the commit's time by default
    return ra.tarball, rb.tarball, wall


def test_two_builds_of_one_commit_are_byte_identical(two_builds: tuple[Path, Path, float]) -> None:
    a, b, wall = two_builds
    assert a.name == "mesh-core-v0.1.0.tgz"
    assert hashlib.sha256(a.read_bytes()).hexdigest() == hashlib.sha256(b.read_bytes()).hexdigest()
    assert (a.parent / "SHA256SUMS").read_text() == (b.parent / "SHA256SUMS").read_text()
    print(f"release build: {wall:.1f} s wall, {a.stat().st_size} bytes")


def test_archive_normalisation(two_builds: tuple[Path, Path, float]) -> None:
    tgz = two_builds[0]
    head = tgz.read_bytes()[:10]
    assert head[3] & 0x08 == 0, "gzip header carries a file name"
    assert head[4:8] == b"\0\0\0\0", "gzip header carries a time"
    with tarfile.open(tgz) as tar:
        assert not tar.pax_headers
        for m in tar.getmembers():
            assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", ""), m.name
            assert m.mtime == EPOCH and not m.pax_headers, m.name
            assert m.mode in (0o644, 0o755), m.name
    names = list(members(tgz))
    assert names == sorted(names)


def test_the_manifest_lists_every_file_and_what_is_absent(
        two_builds: tuple[Path, Path, float]) -> None:
    tgz = two_builds[0]
    top = "mesh-core-v0.1.0"
    manifest = json.loads(read(tgz, f"{top}/manifest.json"))
    files = {n.removeprefix(f"{top}/") for n, m in members(tgz).items() if m.isfile()}
    assert set(manifest["files"]) == files - {"manifest.json", "SHA256SUMS"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256(read(tgz, f"{top}/{name}")).hexdigest() == digest
    sums = {x.partition("  ")[2]: x.partition("  ")[0]
            for x in read(tgz, f"{top}/SHA256SUMS").decode().splitlines()}
    assert set(sums) == files - {"SHA256SUMS"}
    assert manifest["version"] == "0.1.0" and manifest["wire_version"] == 2
    assert manifest["serial"] == EPOCH and len(manifest["git_commit"]) == 40
    assert "agent/mesh_agent-0.1.0-py3-none-any.whl" in files
    assert {"ansible/playbooks/site.yml", "ansible/roles/mesh_agent/tasks/main.yml",
            "ansible/collections/requirements.yml", "ansible/ansible.cfg"} <= files
    for machine in ("x86_64", "aarch64"):
        assert "absent" in manifest["agent"]["bundles"][machine]
    assert "absent" in manifest["sbom"]["debian"]
    sbom = json.loads(read(tgz, f"{top}/sbom/python-agent.cdx.json"))
    names = {c["name"] for c in sbom["components"]}
    assert {"networkx", "cryptography", "starlette", "pyroute2"} <= names
    assert sbom["metadata"]["component"]["name"] == "mesh-agent"
    assert "serialNumber" not in sbom and "timestamp" not in sbom["metadata"]


def fake_bundle(rid: str, version: str = "0.1.0", wire: int = 2) -> bytes:
    init = f'__version__ = "{version}"\nWIRE_VERSION = {wire}\n'.encode()
    entries = [Entry(f"opt/mesh-agent/releases/{rid}/venv/lib/python3.11/site-packages/"
                     "mesh_agent/__init__.py", init),
               Entry(f"opt/mesh-agent/releases/{rid}/venv/.meshcore-installed", b"")]
    return reproducible_tgz(entries, EPOCH)


def put_bundle(repo: Path, manifest_rel: str, rid: str, machine: str, **kw: object) -> None:
    m = repo / manifest_rel
    m.parent.mkdir(parents=True, exist_ok=True)
    (m.parent / f"mesh-agent-{rid}.tgz").write_bytes(fake_bundle(rid, **kw))  # type: ignore[arg-type]
    m.write_text(json.dumps({"release": rid, "bundle": f"mesh-agent-{rid}.tgz",
                             "image": "test", "machine": machine}))


@pytest.fixture(scope="module")
def with_bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = checkout(tmp_path_factory.mktemp("bundles") / "repo")
    put_bundle(repo, "build/agent/bundle.json", "amd64bundle00001", "x86_64")
    put_bundle(repo, "build/images/rpi-arm64/agent-bundle.json", "arm64bundle00001", "aarch64")
    image = repo / "build/images/rpi-arm64/out-abc/manifest.json"
    image.parent.mkdir(parents=True)
    image.write_text(json.dumps({"name": "mesh-core-rpi-arm64", "agent_bundle": "arm64bundle00001",
                                 "packages": [{"name": "chrony", "version": "4.3-2",
                                               "arch": "arm64"},
                                              {"name": "bash", "version": "5.2.15-2",
                                               "arch": "arm64"}]}))
    build(repo, repo / "build/release", require_bundles=True, python_sbom=False)
    return repo


def test_bundles_and_the_image_sbom_go_in_when_built(with_bundles: Path) -> None:
    r = build(with_bundles, with_bundles / "build/release-again", require_bundles=True,
              python_sbom=False)
    top = "mesh-core-v0.1.0"
    bundles = r.manifest["agent"]["bundles"]
    assert bundles["x86_64"]["path"] == "agent/bundles/x86_64/mesh-agent-amd64bundle00001.tgz"
    assert bundles["aarch64"]["release"] == "arm64bundle00001"
    deb = json.loads(read(r.tarball, f"{top}/sbom/debian-image.cdx.json"))
    assert [c["purl"] for c in deb["components"]] == [
        "pkg:deb/debian/bash@5.2.15-2?arch=arm64", "pkg:deb/debian/chrony@4.3-2?arch=arm64"]
    first = with_bundles / "build/release/mesh-core-v0.1.0.tgz"
    assert hashlib.sha256(first.read_bytes()).hexdigest() == r.sha256


def test_require_bundles_and_a_stale_bundle_fail(tmp_path: Path) -> None:
    repo = checkout(tmp_path / "repo")
    with pytest.raises(BuildError, match="agent bundle not built"):
        build(repo, tmp_path / "out", require_bundles=True, python_sbom=False)
    put_bundle(repo, "build/agent/bundle.json", "oldbundle0000001", "x86_64", wire=1)
    with pytest.raises(BuildError, match=r"wire 1, the sources are 0\.1\.0 wire 2: rebuild"):
        build(repo, tmp_path / "out", python_sbom=False)


def test_sign_k_of_n_and_verify(with_bundles: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = with_bundles / "build/release"
    tgz, manifest = out / "mesh-core-v0.1.0.tgz", out / "mesh-core-v0.1.0.manifest.json"
    keys = tmp_path / "trusted-keys.json"
    for i, name in enumerate(("alice", "bob", "carol")):  # THROWAWAY keys
        assert cli.main(["keygen", "--name", name, "--private", str(tmp_path / f"{name}.pem"),
                         "--keys", str(keys), "--threshold", str(min(i + 1, 2))]) == 0
    assert (tmp_path / "alice.pem").stat().st_mode & 0o077 == 0
    assert json.loads(keys.read_text())["threshold"] == 2
    verify = ["verify", "--keys", str(keys), str(tgz)]
    assert cli.main(["sign", "--key", str(tmp_path / "alice.pem"), str(manifest)]) == 0
    assert cli.main(verify) == 1
    assert "too_few_signatures" in capsys.readouterr().err
    assert cli.main(["sign", "--key", str(tmp_path / "carol.pem"), str(manifest)]) == 0
    assert cli.main(verify) == 0
    assert "signed by alice, carol" in capsys.readouterr().out
    # a wrong key: a stranger's signatures only
    stranger = tmp_path / "mallory.pem"
    assert cli.main(["keygen", "--name", "mallory", "--private", str(stranger)]) == 0
    sigs = tmp_path / "mallory.sigs"
    assert cli.main(["sign", "--key", str(stranger), "--signatures", str(sigs),
                     str(manifest)]) == 0
    assert cli.main([*verify[:3], "--signatures", str(sigs), str(tgz)]) == 1
    assert "unknown_key" in capsys.readouterr().err
    # a tampered file under the same signed manifest
    bad = tmp_path / "mesh-core-v0.1.0.tgz"
    with tarfile.open(tgz) as tar:
        entries = []
        for m in tar.getmembers():
            if m.isfile():
                f = tar.extractfile(m)
                data = f.read() if f else b""
                if m.name.endswith("roles/mesh_agent/tasks/main.yml"):
                    data += b"\n# tampered\n"
                entries.append(Entry(m.name, data))
    bad.write_bytes(reproducible_tgz(entries, EPOCH))
    (tmp_path / manifest.name).write_bytes(manifest.read_bytes())
    assert cli.main(["verify", "--keys", str(keys), "--signatures",
                     str(out / (manifest.name + ".sigs")), str(bad)]) == 1
    assert "file_hash" in capsys.readouterr().err
    # rotation: carol leaves, threshold stays 2, her signature no longer counts
    assert cli.main(["trust", "--keys", str(keys), "--remove", "carol"]) == 0
    assert cli.main(verify) == 1


def test_a_built_release_installs_on_a_node(with_bundles: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from mesh_agent.release.install import install
    from mesh_agent.release.store import Releases
    from meshcore_tools.release.sign import add_trusted, public_raw, sign

    out = with_bundles / "build/release"
    manifest = (out / "mesh-core-v0.1.0.manifest.json").read_bytes()
    keys = [Ed25519PrivateKey.generate() for _ in range(2)]  # THROWAWAY
    for i, k in enumerate(keys):
        trust = add_trusted(tmp_path / "keys.json", f"m{i}", public_raw(k), 2 if i else 1)
    unpacked = tmp_path / "unpacked"
    with tarfile.open(out / "mesh-core-v0.1.0.tgz") as tar:
        tar.extractall(unpacked, filter="data")
    done = install(tmp_path / "node", tmp_path / "state/release-state.json", manifest,
                   [sign(manifest, k) for k in keys], trust, unpacked / "mesh-core-v0.1.0",
                   machine="aarch64")
    assert done.release_id == "arm64bundle00001"
    assert Releases(tmp_path / "node").info(done.release_id).wire_version == 2


def test_tarball_writer_is_deterministic_for_any_entry_order() -> None:
    entries = [Entry("b/x", b"1"), Entry("a", b"2", True), Entry("b/c/d", b"3")]
    one = reproducible_tgz(entries, EPOCH)
    assert one == reproducible_tgz(list(reversed(entries)), EPOCH)
    assert gzip.decompress(one)  # a valid gzip stream
    with tarfile.open(fileobj=io.BytesIO(one)) as tar:
        assert tar.getnames() == ["a", "b", "b/c", "b/c/d", "b/x"]
        assert tar.getmember("a").mode == 0o755


def test_the_version_has_one_owner() -> None:
    import mesh_agent
    from meshcore_tools.release.build import agent_version, source_wire_version

    assert mesh_agent.__version__ == agent_version(ROOT)
    assert source_wire_version(ROOT) == mesh_agent.WIRE_VERSION
