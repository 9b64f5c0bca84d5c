"""The rpi-arm64 SD-card image: one image for the fleet, identity at flash time.

Fast tests (no image needed): the image applies site.yml's mesh-node roles, and
playbooks/flash.yml writes a complete, valid per-node NoCloud seed into the FAT
boot partition of a disk image (a small one made here with sfdisk/mkfs.vfat).

Slow tests (`--run-slow`, `make test-full`, which builds the image first): the
built image's outputs and manifest, the absence of any PEM private key in it
(its root filesystem read back with debugfs, its boot partition with mtools),
and the QEMU boot test (meshcore_tools.image.boot_test).
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
from cryptography import x509
from cryptography.hazmat.primitives import serialization

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build/images/rpi-arm64/latest"
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


def _plays(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text())


def _roles(play: dict) -> list[tuple[str, str | None]]:
    """(role, its when condition) in order."""
    return [
        (r["role"], r.get("when")) if isinstance(r, dict) else (r, None)
        for r in play.get("roles", [])
    ]


def test_image_applies_site_yml_mesh_node_roles():
    """The image's chroot stages run the same roles, in the same order and under
    the same conditions, as site.yml's mesh_nodes play, minus lab_pki (identity
    comes from the seed, never from the image)."""
    site = next(p for p in _plays(ROOT / "playbooks/site.yml") if p["hosts"] == "mesh_nodes")
    image = _plays(ROOT / "playbooks/image.yml")
    chroot_roles = [
        (name, when)
        for p in image
        if str(p["hosts"]).startswith("image_stage_")
        for name, when in _roles(p)
    ]
    assert chroot_roles == [(name, when) for name, when in _roles(site) if name != "lab_pki"]
    # The molecule image scenario converges a booted card with the same roles
    # (all but mesh_agent, which the agent stage installs).
    converge = _plays(ROOT / "molecule/image/converge.yml")[0]
    assert _roles(converge) == [(n, w) for n, w in chroot_roles if n != "mesh_agent"]


def test_image_role_variables_select_the_pi_fleet_roles():
    """batman-adv and Yggdrasil are in the image; spire_agent is skipped (no SPIRE
    release on this machine, so the image takes its identity from the seed)."""
    roles_vars = yaml.safe_load((ROOT / "images/stages/roles-vars.yml").read_text())
    assert roles_vars["mesh_link_backend"] == "batman"
    assert roles_vars["mesh_yggdrasil_enabled"] is True
    assert roles_vars["mesh_identity_source"] == "lab_pki"
    packages = yaml.safe_load((ROOT / "images/targets/rpi-arm64.yml").read_text())["image_packages"]
    assert {"batctl", "wpasupplicant", "yggdrasil"} <= set(packages)


def _fake_card(path: Path) -> int:
    """A 48 MiB disk image with a FAT32 boot partition at 1 MiB, like the real layout."""
    subprocess.run(["truncate", "-s", "48M", str(path)], check=True)
    subprocess.run(
        ["sfdisk", "-q", str(path)],
        input="label: dos\nstart=2048, size=81920, type=c\n",
        text=True,
        check=True,
    )
    part = path.with_suffix(".vfat")
    subprocess.run(
        ["mkfs.vfat", "-F", "32", "-n", "CIDATA", "-C", str(part), "40960"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["dd", f"if={part}", f"of={path}", "bs=1M", "seek=1", "conv=notrunc", "status=none"],
        check=True,
    )
    return 2048 * 512


def test_flash_writes_a_complete_seed(tmp_path):
    _tools("sfdisk", "mkfs.vfat", "mcopy")
    card = tmp_path / "card.img"
    offset = _fake_card(card)
    host = "rpi-test-07"
    (tmp_path / "inventory.yml").write_text(
        yaml.safe_dump(
            {
                "mesh_nodes": {
                    "hosts": {
                        host: {
                            "mesh_node_address": "10.77.0.7",
                            "mesh_agent_hello_interval_ms": 200,
                        }
                    }
                }
            }
        )
    )
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    proc = subprocess.run(
        [
            str(ROOT / ".venv/bin/ansible-playbook"),
            "-i",
            str(tmp_path / "inventory.yml"),
            str(ROOT / "playbooks/flash.yml"),
            "-e",
            f"flash_device={card}",
            "-e",
            f"flash_out_dir={tmp_path}/flash",
            "-e",
            f"lab_pki_dir={tmp_path}/pki",
            "-e",
            json.dumps({"flash_ssh_authorized_keys": [OPERATOR_KEY]}),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    def read(name: str) -> str:
        return subprocess.run(
            ["mtype", "-i", f"{card}@@{offset}", f"::/{name}"],
            env=MTOOLS_ENV,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    user_data_text = read("user-data")
    assert user_data_text.startswith("#cloud-config\n")
    user_data = yaml.safe_load(user_data_text)
    meta = yaml.safe_load(read("meta-data"))
    assert user_data["hostname"] == host and meta["local-hostname"] == host
    assert meta["instance-id"].startswith(f"mesh-{host}-")
    assert user_data["users"][0]["ssh_authorized_keys"][0].endswith("op@example")
    files = {f["path"]: f for f in user_data["write_files"]}
    assert set(files) == {
        "/etc/mesh-agent/agent.yml",
        "/etc/mesh-agent/pki/ca.crt",
        "/etc/mesh-agent/pki/node.crt",
        "/etc/mesh-agent/pki/node.key",
    }
    assert files["/etc/mesh-agent/pki/node.key"]["permissions"] == "0640"
    assert files["/etc/mesh-agent/pki/node.key"]["owner"] == "root:meshcore"

    # The agent config is the role's template, with this host's inventory values,
    # and the agent's own parser accepts it.
    from mesh_agent.config import parse_config

    cfg = parse_config(yaml.safe_load(files["/etc/mesh-agent/agent.yml"]["content"]))
    assert (cfg.node_name, str(cfg.node_address), cfg.hello_interval_ms) == (host, "10.77.0.7", 200)

    # The certificate names this node and matches the key in the seed.
    cert = x509.load_pem_x509_certificate(files["/etc/mesh-agent/pki/node.crt"]["content"].encode())
    uris = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [f"spiffe://mesh.lab/node/{host}"]
    key = serialization.load_pem_private_key(
        files["/etc/mesh-agent/pki/node.key"]["content"].encode(), None
    )
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]


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


@pytest.mark.slow
def test_boots_under_qemu_with_a_seed():
    _tools("qemu-system-aarch64", "mcopy")
    img = _built()
    proc = subprocess.run(
        [sys.executable, "-m", "meshcore_tools.image.boot_test", "--image", str(img)],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
        cwd=ROOT,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    assert proc.returncode == 0 and result.get("ok") is True, proc.stdout + proc.stderr
