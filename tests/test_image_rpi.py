"""The rpi-arm64 SD-card image: one image for the fleet, identity at flash time.

Fast tests (no image needed): the image's package list, and reproducible root
filesystems (the seeds, make seed and the site config: tests/test_site_config.py).

Slow tests (`--run-slow`, `make test-full`, which builds the starter site's
image first): the built image's outputs and manifest (with the site it is
for), the absence of any PEM private key and of any per-node file in it, the
radio settings it carries (the site config's), read back from its root
filesystem with debugfs and its boot partition with mtools, and the QEMU boot
test (meshcore_tools.image.boot_test).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# make image-rpi builds the starter site's image by default (INVENTORY=inventories/starter).
OUT = ROOT / "build/images/rpi-arm64/site-starter"
IMAGE_NAME = "mesh-core-rpi-arm64"
PEM_KEY = re.compile(
    rb"^-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----\r?\n"
    rb"(?:[A-Za-z0-9+/=:, -]*\r?\n)+?"
    rb"-----END \1PRIVATE KEY-----",
    re.MULTILINE,
)
OPERATOR_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITEST op@example"
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def _tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (requirements/apt.txt, make setup)")


def test_image_packages_carry_what_the_roles_need():
    """Every role's package is pre-seeded (the roles stage has no network), and
    chrony replaces systemd-timesyncd (time without internet; they conflict)."""
    packages = yaml.safe_load((ROOT / "images/targets/rpi-arm64.yml").read_text())["image_packages"]
    assert {"batctl", "wpasupplicant", "yggdrasil", "chrony", "iw"} <= set(packages)
    assert "systemd-timesyncd" not in packages


def _built() -> Path:
    img = OUT / f"{IMAGE_NAME}.img"
    if not img.exists():
        pytest.skip("rpi-arm64 image not built (make image-rpi; make test-full builds it)")
    return img


def _partitions(img: Path) -> list[dict]:
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(img)], capture_output=True, text=True, check=True
        ).stdout
    )["partitiontable"]
    return table["partitions"]


def test_root_filesystem_is_byte_identical_across_rebuilds(tmp_path):
    """mke2fs -d copies build-time atimes and ctimes; the clamp makes two builds equal.

    The same tree is made into an ext4 twice, with its files read and re-chmodded
    in between (new atime and ctime, a newer mtime on one file), the way two
    builds of the same inputs leave it. The assembly's mke2fs options plus
    meshcore_tools/image/ext4_clamp_times.py must give byte-identical images that fsck clean.
    """
    if not (shutil.which("mke2fs") and shutil.which("debugfs")):
        pytest.skip("e2fsprogs (mke2fs, debugfs) not installed")
    epoch = "1735689600"
    uuid = "11111111-2222-4333-8444-555555555555"
    tree = tmp_path / "tree"
    for d in range(5):
        (tree / f"d{d}").mkdir(parents=True)
        for f in range(20):
            (tree / f"d{d}" / f"f{f}").write_text(f"{d}/{f}")
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": epoch}
    images = []
    for run in range(2):
        for path in tree.rglob("*"):
            os.chmod(path, path.stat().st_mode)  # ctime = now
            if path.is_file():
                path.read_bytes()
        (tree / "d0" / "f0").touch()  # mtime newer than the epoch: clamped
        img = tmp_path / f"root{run}.ext4"
        subprocess.run(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-U", uuid, "-I", "256",
             "-E", f"hash_seed={uuid},lazy_itable_init=0,lazy_journal_init=0",
             "-d", str(tree), str(img), "16M"],
            check=True, env=env, capture_output=True,
        )  # fmt: skip
        out = subprocess.run(
            [sys.executable, str(ROOT / "tools/meshcore_tools/image/ext4_clamp_times.py"), str(img),
             epoch],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        report = json.loads(out.stdout)
        assert report["inodes"] >= 106  # root + 5 dirs + 100 files
        assert report["mtimes_clamped"] >= 1
        subprocess.run(["e2fsck", "-fn", str(img)], check=True, env=env, capture_output=True)
        images.append(hashlib.sha256(img.read_bytes()).hexdigest())
    assert images[0] == images[1]
    stat = subprocess.run(
        ["debugfs", "-R", "stat /d0/f0", str(img)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    for field in ("ctime", "atime", "mtime"):
        assert re.search(rf"{field}: 0x{int(epoch):08x}:00000000", stat), stat


@pytest.mark.slow
def test_outputs_and_manifest():
    img = _built()
    sums = dict(reversed(line.split()) for line in (OUT / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {
        f"{IMAGE_NAME}.img.xz",
        f"{IMAGE_NAME}.bmap",
        f"{IMAGE_NAME}.img",
        "manifest.json",
    }
    for name, digest in sums.items():
        h = hashlib.sha256()
        with (OUT / name).open("rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(chunk)
        assert h.hexdigest() == digest, name
    manifest = json.loads((OUT / "manifest.json").read_text())
    names = {p["name"] for p in manifest["packages"]}
    assert {
        "raspi-firmware",
        "linux-image-arm64",
        "cloud-init",
        "prometheus-node-exporter",
    } <= names
    assert all(p["arch"] in ("arm64", "all") for p in manifest["packages"])
    assert re.fullmatch(r"[0-9a-f]{40}", manifest["git"]["commit"])
    assert {"rootfs", "roles", "agent", "assembly"} == set(manifest["stage_keys"])
    # Which site the image is for: make seed compares it with the inventory it seeds for.
    assert manifest["site"]["name"] == "starter"
    assert re.fullmatch(r"[0-9a-f]{16}", manifest["site"]["key"])
    assert "mesh-agent" in {p["name"].replace("_", "-") for p in manifest["agent_python_packages"]}
    parts = _partitions(img)
    assert [p["type"] for p in parts] == ["c", "83"]
    bmap = (OUT / f"{IMAGE_NAME}.bmap").read_text()
    assert "<ImageSize>" in bmap and str(img.stat().st_size) in bmap


@pytest.mark.slow
def test_image_holds_no_private_key(tmp_path):
    """Every file of both partitions, read back from the image itself."""
    _tools("debugfs", "mcopy")
    img = _built()
    boot, root = _partitions(img)
    root_img = tmp_path / "root.ext4"
    subprocess.run(
        [
            "dd",
            f"if={img}",
            f"of={root_img}",
            "bs=512",
            f"skip={root['start']}",
            f"count={root['size']}",
            "conv=sparse",
            "status=none",
        ],
        check=True,
    )
    (tmp_path / "root").mkdir()
    subprocess.run(
        ["debugfs", "-R", f"rdump / {tmp_path}/root", str(root_img)],
        check=True,
        capture_output=True,
    )
    (tmp_path / "boot").mkdir()
    subprocess.run(
        ["mcopy", "-s", "-i", f"{img}@@{boot['start'] * 512}", "::/*", str(tmp_path / "boot")],
        check=True,
        env=MTOOLS_ENV,
    )
    scanned, found = 0, []
    for base in (tmp_path / "root", tmp_path / "boot"):
        for path in base.rglob("*"):
            if path.is_file() and not path.is_symlink():
                scanned += 1
                if PEM_KEY.search(path.read_bytes()):
                    found.append(str(path.relative_to(tmp_path)))
    assert scanned > 10000, scanned
    assert found == []
    # Keys that are not PEM: Yggdrasil's (hex; made at first boot), SSH host keys
    # (made at first boot). The key-less Yggdrasil template is there.
    etc = tmp_path / "root/etc"
    assert not (etc / "yggdrasil/private.key").exists()
    assert not (etc / "yggdrasil/yggdrasil.conf").exists()
    assert "@MESHCORE_PRIVATE_KEY@" in (etc / "yggdrasil/yggdrasil.conf.in").read_text()
    assert list(etc.glob("ssh/ssh_host_*_key")) == []
    # The radio settings are the site config's (inventories/starter), not role defaults.
    site = yaml.safe_load((ROOT / "inventories/starter/group_vars/all/site.yml").read_text())[
        "site"
    ]
    wpa = (etc / "wpa_supplicant/wpa_supplicant-nl80211-wlan0.conf").read_text()
    radio = site["mesh"]["radio"]
    assert f'ssid="{radio["ssid"]}"' in wpa and f"frequency={radio['frequency']}" in wpa
    assert f"country={radio['country']}" in wpa and "mode=1" in wpa  # IBSS
    assert "Name=wlan0" in (etc / "systemd/network/40-meshcore-link.network").read_text()
    # No per-node file: the address, time sources and identity come from each card's seed.
    assert not (
        etc / "systemd/network/40-meshcore-link.network.d/50-meshcore-address.conf"
    ).exists()
    assert not (etc / "chrony/sources.d/meshcore.sources").exists()
    assert not (etc / "mesh-agent/agent.yml").exists()


@pytest.mark.slow
def test_boots_under_qemu_with_a_seed():
    _tools("qemu-system-aarch64", "mcopy")
    _built()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshcore_tools.image.boot_test",
            "--inventory",
            str(ROOT / "inventories/starter"),
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
        cwd=ROOT,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    assert proc.returncode == 0 and result.get("ok") is True, proc.stdout + proc.stderr
