"""The node's event log: what happened to this agent, in order, kept across restarts.

An append-only, bounded log in the agent's SQLite database (:mod:`.db`):
links going up and down (with the reason), failovers (with their duration),
adverts rejected (with the reason), identity rotations and refusals, and the
agent's own starts and stops. It is what ``/v1/events`` serves, what
``meshctl events`` reads, and the history the self-healing loop learns from.

Properties, each tested (``tests/test_events.py``):

- **Append-only, ordered.** Each record gets the next ``id``, which is the
  cursor readers resume from: pruning only ever removes the oldest records,
  so the newest id stays and ids keep growing (no AUTOINCREMENT table to
  write on every append). Records are never changed. A database that had to
  be reset starts again at 1: a reader whose cursor is beyond ``newest_id``
  knows the log was reset.
- **Crash-safe.** :meth:`EventLog.append` returns after the record is
  committed (WAL); ``kill -9`` at any point loses at most the record being
  written, and the file always opens (:func:`.db.open_db`).
- **Bounded.** At most ``max_records`` are kept, plus one pruning batch (a
  tenth of that) between prunes; the oldest go first. Each record's text is
  capped, and a per-kind token bucket (:class:`Throttle`)
  keeps a storm (a flood of forged adverts, a flapping radio) from evicting
  the history: suppressed records are counted and the next record of that
  kind says how many were suppressed before it.
- **Time.** ``wall`` is the node's clock (a Pi without an RTC may start in
  1970), ``mono`` its monotonic clock and ``boot`` the kernel's boot id:
  order by ``id``, and compare ``mono`` only within one ``boot``.
- **Never in the way.** A log that cannot be opened or written (read-only or
  full disk) counts the failure, logs once, and the agent keeps routing.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from mesh_agent.store.db import DB_NAME, StoreError, checkpoint, migrate, open_db, set_aside

log = logging.getLogger("mesh_agent.events")

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
DEFAULT_MAX_RECORDS = 50_000
MAX_TEXT = 255  # subject and reason
MAX_DETAIL = 2048  # bytes of JSON per record


class EventKind(StrEnum):
    """The closed set of things the log records (bounded metric labels, API filters)."""

    AGENT_STARTED = "agent_started"  # reason: first_start | after_stop | after_crash | after_reboot
    AGENT_STOPPED = "agent_stopped"  # reason: signal | error
    LINK_UP = "link_up"  # subject: neighbour
    LINK_DOWN = "link_down"  # subject: neighbour; reason: timeout | echo | carrier | ...
    FAILOVER = "failover"  # subject: neighbour; detail: duration_seconds, destinations...
    ADVERT_REJECTED = "advert_rejected"  # subject: claimed origin; reason: REJECT_REASONS
    IDENTITY_ROTATED = "identity_rotated"  # reason: the source (files | workload_api)
    IDENTITY_REJECTED = "identity_rejected"  # a new identity that did not load or verify
    LOG_RESET = "log_reset"  # the database was unreadable and was set aside
    # subject: target (a charge: the node); reason: apply|undo|charge:<action> (mesh_agent.mapek)
    REMEDIATION = "remediation"
    MAINTENANCE = "maintenance"  # subject: the node; reason: open | ended | closed | invalid


# Records per second and burst per (kind, reason); kinds not listed are not throttled.
DEFAULT_LIMITS: Mapping[str, tuple[float, float]] = {
    EventKind.ADVERT_REJECTED: (1.0, 20.0),
    EventKind.LINK_UP: (2.0, 50.0),
    EventKind.LINK_DOWN: (2.0, 50.0),
    EventKind.FAILOVER: (2.0, 50.0),
    EventKind.IDENTITY_REJECTED: (0.1, 5.0),
    EventKind.REMEDIATION: (1.0, 20.0),
}


@dataclass(frozen=True)
class Event:
    id: int
    wall: float
    mono: float
    boot: str
    kind: str
    subject: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Throttle:
    """Token buckets per key (sans-I/O: takes the time, returns a decision).

    ``admit(key, now)`` says whether a record may be written and how many of
    that key were suppressed since the last one written. At most ``max_keys``
    keys are tracked (keys are built from closed sets, so this is a backstop):
    any further key shares one overflow bucket.
    """

    OVERFLOW = "<overflow>"

    def __init__(self, limits: Mapping[str, tuple[float, float]], max_keys: int = 256) -> None:
        self.limits = dict(limits)
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._suppressed: dict[str, int] = {}

    def admit(self, kind: str, reason: str, now: float) -> tuple[bool, int]:
        limit = self.limits.get(kind)
        if limit is None:
            return True, 0
        rate, burst = limit
        key = f"{kind}:{reason}"
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            key = self.OVERFLOW
        tokens, at = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - at) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False, 0
        self._buckets[key] = (tokens - 1.0, now)
        return True, self._suppressed.pop(key, 0)


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return "unknown"


_SCHEMA: list[list[str]] = [
    [
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            wall REAL NOT NULL,
            mono REAL NOT NULL,
            boot TEXT NOT NULL,
            kind TEXT NOT NULL,
            subject TEXT NOT NULL DEFAULT '',
            reason TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX events_by_kind ON events (kind, id)",
    ],
]
_COLUMNS = "id, wall, mono, boot, kind, subject, reason, detail"


def _row(row: tuple[Any, ...]) -> Event:
    try:
        detail = json.loads(row[7])
    except ValueError:
        detail = {}
    return Event(int(row[0]), float(row[1]), float(row[2]), str(row[3]), str(row[4]),
                 str(row[5]), str(row[6]), detail if isinstance(detail, dict) else {})


def _detail_text(detail: Mapping[str, Any]) -> str:
    text = json.dumps(detail, sort_keys=True, separators=(",", ":"), default=str)
    if len(text) > MAX_DETAIL:
        text = json.dumps({"truncated": True, "bytes": len(text)})
    return text


class EventLog:
    """The event log in ``state_dir/agent.db``. Thread-safe (one connection under a lock).

    Plain counters (``appended_total``, ``suppressed_total`` per kind,
    ``errors_total``) are for the metrics collector to read at scrape time.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        max_records: int = DEFAULT_MAX_RECORDS,
        limits: Mapping[str, tuple[float, float]] = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        boot_id: str | None = None,
    ) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.path = path
        self.max_records = max_records
        self.throttle = Throttle(limits)
        self.clock = clock
        self.wall = wall
        self.boot = boot_id if boot_id is not None else read_boot_id()
        self.appended_total = 0
        self.suppressed_total: dict[str, int] = {}
        self.errors_total = 0
        self._lock = threading.Lock()
        # Prune in batches (a tenth of the cap), not on every append.
        self._prune_every = max(1, max_records // 10)
        self._conn: sqlite3.Connection | None = None
        self.error: str | None = None
        if path is None:  # no log at all (a test, or the agent told so)
            self.error = "disabled"
            return
        try:
            self._conn, reset = self._open(path)
        except (OSError, sqlite3.Error, StoreError) as exc:
            self.error = f"{path}: {exc}"
            self.errors_total += 1
            log.error("event log unavailable (%s); the agent runs without one", self.error)
            return
        if reset:
            self.append(EventKind.LOG_RESET, reason="unreadable",
                        detail={"moved_to": str(path.with_name(path.name + ".corrupt"))})

    @classmethod
    def in_state_dir(cls, state_dir: Path, **kwargs: Any) -> EventLog:
        return cls(state_dir / DB_NAME, **kwargs)

    @classmethod
    def disabled(cls) -> EventLog:
        """A log that records nothing (appends return None)."""
        return cls(None)

    @staticmethod
    def _open(path: Path) -> tuple[sqlite3.Connection, bool]:
        conn, reset = open_db(path)
        try:
            migrate(conn, "events", _SCHEMA)
        except StoreError as exc:  # written by a newer agent: keep it, start afresh
            conn.close()
            log.error("event log: %s; setting it aside", exc)
            set_aside(path)
            conn, _ = open_db(path)
            migrate(conn, "events", _SCHEMA)
            reset = True
        return conn, reset

    @property
    def available(self) -> bool:
        return self._conn is not None

    # -- writing ----------------------------------------------------------
    def append(
        self,
        kind: str,
        subject: str = "",
        reason: str = "",
        detail: Mapping[str, Any] | None = None,
    ) -> int | None:
        """Record one event; its id once committed, or None (throttled or no log)."""
        if self._conn is None:
            return None
        now = self.clock()
        admitted, suppressed = self.throttle.admit(kind, reason, now)
        if not admitted:
            self.suppressed_total[kind] = self.suppressed_total.get(kind, 0) + 1
            return None
        d = dict(detail or {})
        if suppressed:
            d["suppressed_before"] = suppressed
        row = (self.wall(), now, self.boot, str(kind), subject[:MAX_TEXT], reason[:MAX_TEXT],
               _detail_text(d))
        with self._lock:
            try:
                cur = self._conn.execute(
                    "INSERT INTO events (wall, mono, boot, kind, subject, reason, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", row)
                rowid = int(cur.lastrowid or 0)
                if rowid % self._prune_every == 0:
                    self._conn.execute("DELETE FROM events WHERE id <= ?",
                                       (rowid - self.max_records,))
            except sqlite3.Error as exc:  # disk full, I/O error: count, never raise
                self.errors_total += 1
                if self.error is None:
                    log.error("event log write failed: %s", exc)
                self.error = str(exc)
                return None
        self.appended_total += 1
        return rowid

    def record_start(self, **detail: Any) -> int | None:
        """Record this agent's start; the reason says how the previous run ended."""
        last = self._last_of((EventKind.AGENT_STARTED, EventKind.AGENT_STOPPED))
        if last is None:
            reason = "first_start"
        elif last.boot != self.boot and last.kind == EventKind.AGENT_STARTED:
            reason = "after_reboot"  # no clean stop, and the kernel booted since
        elif last.kind == EventKind.AGENT_STARTED:
            reason = "after_crash"
        else:
            reason = "after_stop"
        return self.append(EventKind.AGENT_STARTED, reason=reason, detail=detail)

    def record_stop(self, reason: str, **detail: Any) -> int | None:
        return self.append(EventKind.AGENT_STOPPED, reason=reason, detail=detail)

    # -- reading ----------------------------------------------------------
    def query(
        self,
        *,
        after: int | None = None,
        kinds: Collection[str] = (),
        subject: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[Event]:
        """Events in id order: the first ``limit`` after ``after``, or the newest ``limit``.

        ``since`` keeps the records whose ``wall`` is at or after it (Unix seconds; the
        node's clock, which on a Pi without an RTC may have started in 1970).
        """
        if self._conn is None:
            return []
        where: list[str] = []
        args: list[object] = []
        if after is not None:
            where.append("id > ?")
            args.append(after)
        if kinds:
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            args.extend(kinds)
        if subject is not None:
            where.append("subject = ?")
            args.append(subject)
        if since is not None:
            where.append("wall >= ?")
            args.append(since)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        order = "ASC" if after is not None else "DESC"
        sql = f"SELECT {_COLUMNS} FROM events{clause} ORDER BY id {order} LIMIT ?"
        with self._lock:
            rows = self._conn.execute(sql, (*args, max(0, limit))).fetchall()
        events = [_row(r) for r in rows]
        return events if after is not None else events[::-1]

    def bounds(self) -> tuple[int, int]:
        """(oldest id kept, newest id); (0, 0) when empty."""
        if self._conn is None:
            return 0, 0
        with self._lock:
            row = self._conn.execute("SELECT min(id), max(id) FROM events").fetchone()
        return (int(row[0]), int(row[1])) if row and row[0] is not None else (0, 0)

    def checkpoint(self) -> tuple[int, int]:
        """Move the WAL into the database; for a worker thread (it fsyncs), never raises.

        Returns (WAL frames, frames copied); (0, 0) without a log or on error.
        """
        if self._conn is None or self.path is None:
            return 0, 0
        try:
            return checkpoint(self.path)
        except sqlite3.Error as exc:
            self.errors_total += 1
            log.debug("event log checkpoint: %s", exc)
            return 0, 0

    def _last_of(self, kinds: Collection[str]) -> Event | None:
        found = self.query(kinds=kinds, limit=1)
        return found[-1] if found else None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
