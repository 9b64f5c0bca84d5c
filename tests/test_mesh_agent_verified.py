"""The mesh_agent role's verified install: the tasks of roles/mesh_agent/tasks/stage.yml,
which verified.yml (and rollout.yml's staging play) runs first, taken from the file by
name and run by Ansible on a local host. Its controller half checks a
signed release before anything reaches a node; its staging tasks unpack the tarball on the
node, whole or not at all, at low priority.

The rest of the node half (meshctl release install, then use) needs a node:
tests/test_rollout_lab.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from meshcore_testkit.releases import (
    fake_bundle,
    keys_json,
    release_tarball,
    repack,
    throwaway_keys,
)
from meshcore_tools import ROOT

CONTROLLER_TASKS = ("Check the signed release is on the controller",
                    "Verify the release on the controller",
                    "Refuse a release the controller's verifier refused")
RID = "c" * 16
DEFAULTS = yaml.safe_load((ROOT / "roles/mesh_agent/defaults/main.yml").read_text())


UNPACK_TASKS = ("Create the release staging directory", "Name the staged release",
                "Name the priority the release is unpacked and verified at",
                "Look for the unpacked release", "Copy the release tarball to the node",
                "Unpack the release tarball for the node's verifier")


def run_tasks(tmp: Path, tarball: Path, keys_file: Path, names: tuple[str, ...] = CONTROLLER_TASKS,
              extra: dict[str, Any] | None = None,
              path: str = "/usr/bin:/bin") -> subprocess.CompletedProcess[str]:
    tasks = {t["name"]: t for t in yaml.safe_load(
        (ROOT / "roles/mesh_agent/tasks/stage.yml").read_text())}
    variables = {"mesh_agent_release_tarball": str(tarball),
                 "mesh_agent_release_keys_file": str(keys_file),
                 "mesh_agent_release_signatures_file":
                     str(tarball)[:-4] + ".manifest.json.sigs",
                 "mesh_agent_release_verifier": str(Path(sys.executable).parent /
                                                    "meshcore-release"),
                 **(extra or {})}
    play = [{"name": "verified install, some tasks", "hosts": "all",
             "gather_facts": False, "vars": variables,
             "tasks": [tasks[n] for n in names]}]
    (tmp / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i",
         "n1,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}",
         str(tmp / "play.yml")],
        capture_output=True, text=True, timeout=120,
        env={"PATH": path, "ANSIBLE_FORCE_COLOR": "0", "HOME": str(tmp),
             "ANSIBLE_LOCALHOST_WARNING": "0"})


@dataclass
class Release:
    out: Path  # where the tarball, its detached manifest and signatures go
    keys_file: Path
    keys: list[Ed25519PrivateKey]  # THROWAWAY
    bundle: bytes


@pytest.fixture
def release(tmp_path: Path) -> Release:
    keys = throwaway_keys()
    keys_file = tmp_path / "release-keys.json"
    keys_file.write_text(keys_json(keys))
    out = tmp_path / "release"
    out.mkdir()
    bundle = repack(fake_bundle(tmp_path, "0" * 16), "0" * 16, RID, "90.0.1", broken=False)
    return Release(out, keys_file, keys, bundle)


def test_a_signed_release_passes(tmp_path: Path, release: Release) -> None:
    tgz = release_tarball(release.out, release.bundle, RID, "90.0.1", release.keys)
    res = run_tasks(tmp_path, tgz, release.keys_file)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "failed=0" in res.stdout


def test_too_few_signatures_are_refused_with_the_reason(tmp_path: Path,
                                                        release: Release) -> None:
    tgz = release_tarball(release.out, release.bundle, RID, "90.0.1", release.keys, signers=1)
    res = run_tasks(tmp_path, tgz, release.keys_file)
    assert res.returncode != 0
    assert "mesh-core-v90.0.1.tgz is not installed" in res.stdout, res.stdout[-3000:]
    assert "too_few_signatures" in res.stdout


def test_a_swapped_tarball_is_refused(tmp_path: Path, release: Release) -> None:
    tgz = release_tarball(release.out, release.bundle, RID, "90.0.1", release.keys)
    other = tmp_path / "other"
    other.mkdir()
    evil = repack(fake_bundle(tmp_path, "0" * 16), "0" * 16, RID, "90.0.1", broken=True)
    shutil.copy(release_tarball(other, evil, RID, "90.0.1", release.keys), tgz)
    res = run_tasks(tmp_path, tgz, release.keys_file)
    assert res.returncode != 0 and "is not installed" in res.stdout, res.stdout[-3000:]
    assert "differs from the tarball's manifest.json" in res.stdout


def test_no_tarball_says_what_to_set(tmp_path: Path, release: Release) -> None:
    res = run_tasks(tmp_path, tmp_path / "missing.tgz", release.keys_file)
    assert res.returncode != 0
    assert "installs only from a signed release" in res.stdout, res.stdout[-3000:]


def staging(tmp: Path, tarball: Path, keys_file: Path) -> subprocess.CompletedProcess[str]:
    """The staging tasks, with a tar on PATH that records its own nice value."""
    spy = tmp / "spy"
    spy.mkdir(exist_ok=True)
    (spy / "tar").write_text(f'#!/bin/sh\ncut -d" " -f19 /proc/$$/stat >> {tmp / "tar-nice.log"}\n'
                             'exec /bin/tar "$@"\n')
    (spy / "tar").chmod(0o755)
    return run_tasks(tmp, tarball, keys_file, UNPACK_TASKS,
                     {"mesh_agent_release_staging_dir": str(tmp / "staging"),
                      "mesh_agent_release_low_priority": DEFAULTS[
                          "mesh_agent_release_low_priority"]},
                     path=f"{spy}:/usr/bin:/bin")


def test_the_node_unpacks_the_release_whole_once_and_at_low_priority(
        tmp_path: Path, release: Release) -> None:
    tgz = release_tarball(release.out, release.bundle, RID, "90.0.1", release.keys)
    res = staging(tmp_path, tgz, release.keys_file)
    assert res.returncode == 0, res.stdout[-3000:]
    staged = tmp_path / "staging" / "mesh-core-v90.0.1"
    assert (staged / "manifest.json").is_file()
    assert sorted(p.name for p in (tmp_path / "staging").iterdir()) == ["mesh-core-v90.0.1"]
    assert (tmp_path / "tar-nice.log").read_text().split() == ["19"]
    again = staging(tmp_path, tgz, release.keys_file)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]
    assert (tmp_path / "tar-nice.log").read_text().split() == ["19"]  # not unpacked again


def test_an_unpack_cut_short_is_not_taken_for_a_whole_one(tmp_path: Path,
                                                           release: Release) -> None:
    tgz = release_tarball(release.out, release.bundle, RID, "90.0.1", release.keys)
    cut = tmp_path / "cut" / tgz.name
    cut.parent.mkdir()
    cut.write_bytes(tgz.read_bytes()[: tgz.stat().st_size // 2])
    res = staging(tmp_path, cut, release.keys_file)
    assert res.returncode != 0, res.stdout[-3000:]
    assert not (tmp_path / "staging" / "mesh-core-v90.0.1").exists()
    res = staging(tmp_path, tgz, release.keys_file)
    assert res.returncode == 0, res.stdout[-3000:]
    assert (tmp_path / "staging" / "mesh-core-v90.0.1" / "manifest.json").is_file()
    assert sorted(p.name for p in (tmp_path / "staging").iterdir()) == ["mesh-core-v90.0.1"]
