"""A reproducible .tgz from a list of entries: no I/O but the bytes it returns.

Reproducible means: the same entries give the same bytes on any machine, whoever
runs it and whenever (reproducible-builds.org's archive rules): names sorted,
owner and group 0 with no names, every mtime set to SOURCE_DATE_EPOCH, modes
normalised to 0644/0755, GNU tar headers (no pax headers, so no atime/ctime), and
a gzip header with mtime 0 and no file name (what ``gzip -n`` writes).
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class Entry:
    """One file of the archive: its name, content and whether it is executable."""

    name: str
    data: bytes
    executable: bool = False


def directories(names: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for n in names:
        out.update(str(p) for p in PurePosixPath(n).parents if str(p) != ".")
    return out


def reproducible_tgz(entries: Iterable[Entry], epoch: int) -> bytes:
    """The gzip'd tar of *entries* (and their parent directories), byte-identical for the
    same entries and *epoch*."""
    files = {e.name: e for e in entries}
    if len(files) == 0:
        raise ValueError("an empty release")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(set(files) | directories(files)):
            info = tarfile.TarInfo(name)
            info.mtime = epoch
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            e = files.get(name)
            if e is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(e.data)
                info.mode = 0o755 if e.executable else 0o644
                tar.addfile(info, io.BytesIO(e.data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()
