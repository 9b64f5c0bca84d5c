"""Our own advert sequence numbers across restarts: ``<state_dir>/advert-seq.json``.

The reservation of our own advert sequence numbers
(:class:`FileSeqStore`, the :class:`~mesh_agent.topology.lsdb.SeqStore` the LSDB
writes ahead of signing). A Pi has no real-time clock, so the sequence number
cannot come from the wall clock; it comes from here, and a node whose state
is lost still recovers, because its own earlier advert comes back to it and it
continues after that (:mod:`mesh_agent.topology.lsdb`).

Writes are crash-safe: a temporary file in the same directory, fsync, rename
over the old one, fsync of the directory. A torn or unreadable file reads as
"nothing reserved".
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("mesh_agent.store")

SEQ_FILE = "advert-seq.json"


def write_atomic(path: Path, data: bytes) -> None:
    """Replace *path* with *data* so that a crash leaves the old or the new content."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class FileSeqStore:
    """The advert sequence reservation in ``<state_dir>/advert-seq.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / SEQ_FILE

    def load(self) -> int:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            reserved = data["reserved"]
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s unreadable (%s): starting sequence numbers afresh", self.path, exc)
            return 0
        if isinstance(reserved, bool) or not isinstance(reserved, int) or reserved < 0:
            log.warning("%s holds no valid reservation: starting afresh", self.path)
            return 0
        return reserved

    def save(self, reserved: int) -> None:
        write_atomic(self.path, json.dumps({"version": 1, "reserved": reserved}).encode())
