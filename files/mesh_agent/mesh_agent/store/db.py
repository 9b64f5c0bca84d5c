"""The agent's SQLite database under ``state_dir``: opened so that a crash cannot cost it.

One file (``agent.db``) holds everything the agent keeps across restarts:
the event log now, the self-healing Knowledge next. Each component owns its
tables and brings them to its schema version with :func:`migrate`.

Why these settings (https://sqlite.org/wal.html, https://sqlite.org/pragma.html):

- ``journal_mode=WAL``: a commit appends frames to the write-ahead log; a
  frame torn by ``kill -9`` or a power cut fails its checksum and is ignored
  on the next open, so the database is always the last committed state.
- ``synchronous=NORMAL``: no fsync per commit (an SD card's fsync takes tens
  of ms, which would stall the event loop); a committed transaction survives
  the process dying, and after a power cut the database may lose the last
  commits but stays consistent.
- ``page_size=1024``: a commit writes whole pages, and records are small
  (about 200 bytes), so small pages write less (SD cards wear).
- Checkpoints (copying the WAL back into the database) are the only fsyncs,
  so they do not run on the writer: :func:`checkpoint` runs one on a
  connection of its own, from a worker thread, and ``wal_autocheckpoint``
  (4096 pages) is only the backstop that bounds the WAL if nobody does.
  ``journal_size_limit`` truncates the WAL after a checkpoint, so the files
  stay bounded; ``cache_size`` is small because the agent's RSS budget is.

A file that still does not open, or fails ``PRAGMA quick_check`` (a disk that
wrote garbage), is moved aside (one copy, ``agent.db.corrupt``) and a fresh
database is made, so the agent always starts.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("mesh_agent.store")

DB_NAME = "agent.db"
AUTOCHECKPOINT_PAGES = 4096
_SUFFIXES = ("", "-wal", "-shm")


class StoreError(Exception):
    """The database cannot be used (unwritable directory, newer schema, disk error)."""


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit (isolation_level=None): every statement outside an explicit
    # BEGIN is its own transaction. One connection, shared under a lock by its
    # owner, so check_same_thread is off (the API reads from a worker thread).
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=2.0)
    try:
        # Each commit appends whole pages to the WAL: small pages for small
        # records (only takes effect when the file is new).
        conn.execute("PRAGMA page_size=1024")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{path}: cannot use WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA journal_size_limit=1048576")
        # Checkpoints fsync: the owner runs them off the event loop
        # (checkpoint()); this is only the backstop that bounds the WAL.
        conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
        conn.execute("PRAGMA cache_size=-256")  # KiB
        conn.execute("PRAGMA temp_store=MEMORY")
    except BaseException:
        conn.close()
        raise
    return conn


def _healthy(conn: sqlite3.Connection) -> bool:
    row = conn.execute("PRAGMA quick_check").fetchone()
    return row is not None and row[0] == "ok"


def set_aside(path: Path) -> Path:
    """Move the database (and its WAL) to ``<name>.corrupt``, replacing an older copy."""
    aside = path.with_name(path.name + ".corrupt")
    for suffix in _SUFFIXES:
        src, dst = Path(f"{path}{suffix}"), Path(f"{aside}{suffix}")
        dst.unlink(missing_ok=True)
        if src.exists():
            os.replace(src, dst)
    return aside


def open_db(path: Path) -> tuple[sqlite3.Connection, bool]:
    """Open (creating) the database at ``path``; return it and whether it had to be reset.

    Raises StoreError (or OSError) only when a fresh database cannot be made
    either: the directory is missing and cannot be created, or is read-only.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = _connect(path)
        if _healthy(conn):
            return conn, False
        conn.close()
        problem = "failed its integrity check"
    except sqlite3.DatabaseError as exc:  # "file is not a database", a torn header...
        problem = str(exc)
    aside = set_aside(path)
    log.error("state database %s %s: moved to %s, starting a new one", path, problem, aside)
    try:
        return _connect(path), True
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: {exc}") from exc


def migrate(conn: sqlite3.Connection, component: str, steps: Sequence[Sequence[str]]) -> int:
    """Bring ``component``'s tables to version ``len(steps)``; return the version found.

    ``steps[i]`` are the statements that take the schema from version i to
    i + 1, applied in one transaction each. A schema newer than ``steps``
    knows (a downgraded agent) raises StoreError: the caller decides.
    """
    conn.execute("CREATE TABLE IF NOT EXISTS schema_versions ("
                 "component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_versions WHERE component = ?",
                       (component,)).fetchone()
    found = int(row[0]) if row else 0
    if found > len(steps):
        raise StoreError(f"{component} schema version {found} is newer than this agent's "
                         f"({len(steps)})")
    for version in range(found, len(steps)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in steps[version]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                         "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                         (component, version + 1))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return found


def checkpoint(path: Path) -> tuple[int, int]:
    """Copy the WAL back into the database (PASSIVE: never waits for the writer).

    Opens its own connection, so it can run in a worker thread while the
    owner keeps appending. Returns (WAL frames, frames checkpointed).
    """
    conn = sqlite3.connect(path, isolation_level=None, timeout=0.0)
    try:
        row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        conn.close()
    return (int(row[1]), int(row[2])) if row else (0, 0)
