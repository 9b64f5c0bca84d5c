"""The node's fault journal: one JSON file per fault, written before the fault exists.

``<dir>/<fault id>.json`` holds the experiment, the fault class, its
operations (with the facts their undo needs), the deadline (wall clock, so it
survives a reboot) and the kernel's boot id. Writes are atomic (a temporary
file, fsync, rename, fsync of the directory): a SIGKILL or a power cut leaves
the old record or the new one, never half of one. Every change to a node's
faults (inject, remove, reap) holds ``<dir>/.lock`` (flock), which the kernel
releases when its holder dies, so the controller and the reaper never undo the
same fault at once and a killed controller never blocks the reaper.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
DEFAULT_DIR = Path("/var/lib/meshcore-chaos")


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


@dataclass
class Entry:
    id: str
    experiment: str
    fault: str
    deadline: float  # wall clock, seconds since the epoch
    boot: str
    created: float
    ops: list[dict[str, Any]] = field(default_factory=list)
    state: str = "injecting"  # injecting -> active; removed entries are deleted

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Entry:
        data = json.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class Journal:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def path(self, fault_id: str) -> Path:
        return self.dir / f"{fault_id}.json"

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def write(self, entry: Entry) -> None:
        tmp = self.dir / f".{entry.id}.tmp"
        with open(tmp, "w") as f:
            f.write(entry.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path(entry.id))
        self._sync_dir()

    def delete(self, fault_id: str) -> None:
        try:
            self.path(fault_id).unlink()
        except FileNotFoundError:
            return
        self._sync_dir()

    def read(self, fault_id: str) -> Entry | None:
        try:
            return Entry.from_json(self.path(fault_id).read_text())
        except FileNotFoundError:
            return None

    def entries(self) -> list[Entry]:
        """Every fault on record; an unreadable record is returned as an empty one of its id,
        so the reaper still deletes it (its operations cannot be known: the sweep finds them)."""
        out: list[Entry] = []
        if not self.dir.is_dir():
            return out
        for p in sorted(self.dir.glob("*.json")):
            try:
                out.append(Entry.from_json(p.read_text()))
            except (OSError, ValueError, TypeError, KeyError):
                out.append(Entry(p.stem, "", "unreadable", 0.0, "", 0.0))
        return out

    def _sync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
