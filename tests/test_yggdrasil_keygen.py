"""roles/yggdrasil/files/meshcore-yggdrasil-config: the one mechanism that makes
a node's Yggdrasil key (on a live node, run by the role; on a flashed card, at
first boot by meshcore-yggdrasil-config.service) and writes the root-only config
from the role's key-less template. Runs the script with Debian's yggdrasil."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "roles/yggdrasil/files/meshcore-yggdrasil-config"
YGGDRASIL = "/usr/sbin/yggdrasil"
pytestmark = pytest.mark.skipif(
    not Path(YGGDRASIL).exists(),
    reason="needs Debian's yggdrasil (requirements/apt.txt; make setup)",
)
TEMPLATE = {"PrivateKey": "@MESHCORE_PRIVATE_KEY@", "IfName": "none", "Peers": []}


def run(d: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), str(d)], capture_output=True, text=True, check=False)


def address(conf: Path) -> str:
    return subprocess.run([YGGDRASIL, "-useconffile", str(conf), "-address"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_first_run_makes_a_root_only_key_and_config(tmp_path):
    (tmp_path / "yggdrasil.conf.in").write_text(json.dumps(TEMPLATE, indent=2) + "\n")
    first = run(tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["changed"]
    key = (tmp_path / "private.key").read_text().strip()
    assert len(key) == 128 and int(key, 16) >= 0
    assert key not in first.stdout + first.stderr  # never printed
    conf = tmp_path / "yggdrasil.conf"
    for f in (tmp_path / "private.key", conf):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert json.loads(conf.read_text())["PrivateKey"] == key
    assert address(conf).startswith("2")


def test_second_run_keeps_the_key_and_changes_nothing(tmp_path):
    (tmp_path / "yggdrasil.conf.in").write_text(json.dumps(TEMPLATE, indent=2) + "\n")
    assert run(tmp_path).returncode == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    again = run(tmp_path)
    assert (again.returncode, again.stdout) == (0, "")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_new_template_rewrites_the_config_with_the_same_key(tmp_path):
    (tmp_path / "yggdrasil.conf.in").write_text(json.dumps(TEMPLATE) + "\n")
    assert run(tmp_path).returncode == 0
    addr = address(tmp_path / "yggdrasil.conf")
    (tmp_path / "yggdrasil.conf.in").write_text(json.dumps({**TEMPLATE, "IfMTU": 1280}) + "\n")
    again = run(tmp_path)
    assert again.stdout.split() == ["changed"]
    assert json.loads((tmp_path / "yggdrasil.conf").read_text())["IfMTU"] == 1280
    assert address(tmp_path / "yggdrasil.conf") == addr


def test_a_broken_template_fails_and_keeps_the_old_config(tmp_path):
    (tmp_path / "yggdrasil.conf.in").write_text(json.dumps(TEMPLATE) + "\n")
    assert run(tmp_path).returncode == 0
    old = (tmp_path / "yggdrasil.conf").read_bytes()
    broken = '{"PrivateKey": "@MESHCORE_PRIVATE_KEY@", "IfMTU": "x"\n'  # unclosed
    (tmp_path / "yggdrasil.conf.in").write_text(broken)
    bad = run(tmp_path)
    assert bad.returncode != 0
    assert (tmp_path / "yggdrasil.conf").read_bytes() == old
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
