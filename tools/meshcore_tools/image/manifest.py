"""Write the JSON manifest of a built disk image: what went in and what came out.

Package names and versions are read from the rootfs's dpkg status database (no
chroot, no qemu); the agent's Python packages from its venv's dist-info
directories. Every value is derived from the build inputs, so the manifest of a
reproducible build is itself reproducible (no build time, no host name).

    python -m meshcore_tools.image.manifest --rootfs DIR --out DIR --name NAME --meta JSON
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
from pathlib import Path


def dpkg_packages(rootfs: Path) -> list[dict[str, str]]:
    """Installed packages from var/lib/dpkg/status (deb822 paragraphs)."""
    text = (rootfs / "var/lib/dpkg/status").read_text(encoding="utf-8")
    packages = []
    for para in text.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", para, flags=re.MULTILINE))
        if fields.get("Status", "").endswith(" installed"):
            packages.append(
                {
                    "name": fields["Package"],
                    "version": fields["Version"],
                    "arch": fields.get("Architecture", ""),
                }
            )
    return sorted(packages, key=lambda p: p["name"])


def venv_packages(rootfs: Path) -> list[dict[str, str]]:
    """Python distributions in the agent's live venv (/opt/mesh-agent/current)."""
    current = rootfs / "opt/mesh-agent/current"
    if not current.is_symlink():
        return []
    venv = (current.parent / current.readlink()).resolve()
    out = []
    for dist in sorted(venv.glob("lib/python3*/site-packages/*.dist-info")):
        name, _, version = dist.name.removesuffix(".dist-info").rpartition("-")
        out.append({"name": name, "version": version})
    return out


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rootfs", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--meta", required=True, help="JSON: target, keys, inputs, layout, epoch")
    args = ap.parse_args()
    meta = json.loads(args.meta)
    files = {}
    for suffix in (".img.xz", ".bmap", ".img"):
        path = args.out / f"{args.name}{suffix}"
        files[path.name] = {"sha256": sha256(path), "bytes": path.stat().st_size}
    kernels = sorted(
        p.name.removeprefix("vmlinuz-") for p in (args.rootfs / "boot").glob("vmlinuz-*")
    )
    manifest = {
        "name": args.name,
        **meta,
        "git": {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))},
        "kernel": kernels,
        "packages": dpkg_packages(args.rootfs),
        "agent_python_packages": venv_packages(args.rootfs),
        "files": files,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
