"""Clamp every in-use inode's timestamps in an ext4 image to SOURCE_DATE_EPOCH.

`mke2fs -d` copies atime and ctime from the source tree. ctime is whatever the
kernel clock said when the file was last touched during the build, and atime
moves whenever the tree is read, so two builds of the same inputs differ in
every inode. This rewrites atime and ctime of every in-use inode to the epoch,
and mtime only where it is newer (the same clamp as tar's --clamp-mtime),
through debugfs, with no mount.

Usage: python3 ext4_clamp_times.py IMAGE EPOCH   (standard library only: scripts/image-assemble.sh
runs it with the build host's python3, as a file)
Prints one JSON line: inodes touched, mtimes clamped, seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time

FIRST_INO = 11  # inodes 1-10 are reserved; 2 is the root directory


def used_inodes(image: str) -> list[int]:
    """In-use inode numbers, from the per-group free-inode ranges of dumpe2fs."""
    out = subprocess.run(["dumpe2fs", image], capture_output=True, text=True, check=True).stdout
    count = int(re.search(r"^Inode count:\s+(\d+)", out, re.M).group(1))  # type: ignore[union-attr]
    per_group = int(re.search(r"^Inodes per group:\s+(\d+)", out, re.M).group(1))  # type: ignore[union-attr]
    free: set[int] = set()
    for g, line in enumerate(re.findall(r"^[ \t]+Free inodes:[ \t]*(.*)$", out, re.M)):
        base = g * per_group
        for part in filter(None, (p.strip() for p in line.split(","))):
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi or lo)
            if not base < first <= base + per_group:
                raise SystemExit(f"unexpected free range {part!r} in group {g}")
            free.update(range(first, last + 1))
    return [2] + [i for i in range(FIRST_INO, count + 1) if i not in free]


def mtimes(image: str, inodes: list[int]) -> dict[int, int]:
    """mtime of each inode (seconds), read in one debugfs session."""
    cmds = "".join(f"stat <{i}>\n" for i in inodes)
    out = subprocess.run(
        ["debugfs", "-f", "-", image], input=cmds, capture_output=True, text=True, check=True
    ).stdout
    result: dict[int, int] = {}
    for block in out.split("Inode: ")[1:]:
        ino = int(block.split(None, 1)[0])
        m = re.search(r"mtime: 0x([0-9a-f]+)", block)
        if m:
            result[ino] = int(m.group(1), 16)
    return result


def main() -> int:
    image, epoch = sys.argv[1], int(sys.argv[2])
    t0 = time.monotonic()
    inodes = used_inodes(image)
    newer = [i for i, t in mtimes(image, inodes).items() if t > epoch]
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as f:
        for i in inodes:
            f.write(f"sif <{i}> atime @{epoch}\nsif <{i}> ctime @{epoch}\n")
        for i in newer:
            f.write(f"sif <{i}> mtime @{epoch}\n")
        f.flush()
        # debugfs stamps the superblock's write time: pin it to the epoch too.
        env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(epoch))
        subprocess.run(
            ["debugfs", "-w", "-f", f.name, image], capture_output=True, check=True, env=env
        )
    print(
        json.dumps(
            {
                "inodes": len(inodes),
                "mtimes_clamped": len(newer),
                "seconds": round(time.monotonic() - t0, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
