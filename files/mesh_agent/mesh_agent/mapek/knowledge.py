"""Knowledge: what the loop learned, in the agent's SQLite database under ``state_dir``.

The same file and the same mechanism as the event log (:mod:`mesh_agent.store.db`:
``open_db`` with WAL, ``migrate`` per component, ``checkpoint`` from a worker
thread): Knowledge owns its tables under the component name ``knowledge``
and keeps a connection of its own (WAL allows it; the agent's one checkpoint
timer covers the whole file). Tables:

- ``incidents``: one row per incident, the chain signal -> incident -> action
  -> outcome, with the detect, decide and recover times (monotonic within one
  ``boot``, and the wall clock at detection), and the MTTR once recovered;
- ``action_stats``: per (class, action) tries, successes and summed MTTR, what
  the learned policy samples from;
- ``thresholds``: every threshold change, with its reason.

Bounded (the oldest incidents and threshold changes beyond ``max_rows`` are
pruned in batches), crash-safe (every write is one committed transaction;
``kill -9`` loses at most the write in flight, tested), and migrated by
version (schema 2 added the mode and policy an incident ran under, and how
it ended; schema 3 the incident it is a symptom of; schema 4 the default each
threshold value was tuned from; schema 5 a link incident's time to mitigate; schema 6
drops the link classes' action statistics, judged by MTTR until then).
Never in the way: a database that cannot be written counts the error and the
loop goes on with what it holds in memory.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh_agent.mapek.analyze import Incident
from mesh_agent.mapek.plan import ActionStats
from mesh_agent.store.db import DB_NAME, StoreError, migrate, open_db

if TYPE_CHECKING:
    from mesh_agent.mapek.loop import Step

log = logging.getLogger("mesh_agent.mapek")

DEFAULT_MAX_ROWS = 10_000

SCHEMA: list[list[str]] = [
    [  # version 1
        """CREATE TABLE incidents (
            id INTEGER PRIMARY KEY,
            boot TEXT NOT NULL,
            class TEXT NOT NULL,
            target TEXT NOT NULL,
            signal TEXT NOT NULL,
            value REAL NOT NULL,
            threshold REAL NOT NULL,
            detected_wall REAL NOT NULL,
            detected_mono REAL NOT NULL,
            decided_mono REAL,
            recovered_mono REAL,
            action TEXT,
            action_outcome TEXT,
            mttr_seconds REAL
        )""",
        """CREATE TABLE action_stats (
            class TEXT NOT NULL,
            action TEXT NOT NULL,
            tries INTEGER NOT NULL,
            successes INTEGER NOT NULL,
            mttr_sum REAL NOT NULL,
            PRIMARY KEY (class, action)
        )""",
        """CREATE TABLE thresholds (
            id INTEGER PRIMARY KEY,
            wall REAL NOT NULL,
            signal TEXT NOT NULL,
            value REAL NOT NULL,
            reason TEXT NOT NULL
        )""",
    ],
    [  # version 2: what the loop ran as, so the two policies' incidents can be told
        # apart, and how an incident ended (recovered, or gone with its target)
        "ALTER TABLE incidents ADD COLUMN mode TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE incidents ADD COLUMN policy TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE incidents ADD COLUMN resolution TEXT NOT NULL DEFAULT ''",
    ],
    [  # version 3: the incident this one is a symptom of (mapek.loop's attribution)
        "ALTER TABLE incidents ADD COLUMN cause INTEGER",
    ],
    [  # version 4: the default a threshold was tuned from, so a release that moves the
        # default rebases the tuned value (monitor.Thresholds.restore) instead of keeping
        # a value tuned around the old one
        "ALTER TABLE thresholds ADD COLUMN base REAL",
    ],
    [  # version 5: time to mitigate a link incident (our routes over the link at
        # detection, and when none were)
        "ALTER TABLE incidents ADD COLUMN carried INTEGER",
        "ALTER TABLE incidents ADD COLUMN mitigated_mono REAL",
    ],
    [  # version 6: a link incident's action is judged by its time to mitigate
        # (plan.mitigated_in_time), no longer by its MTTR, which was the fault's duration
        # whatever ran: the link classes' statistics of that reward are dropped rather
        # than mixed with the new one
        "DELETE FROM action_stats WHERE class IN ('lossy_link', 'slow_link', 'flapping_link')",
    ],
]

_INCIDENT_COLUMNS = ("id, boot, class, target, signal, value, threshold, detected_wall, "
                     "detected_mono, decided_mono, recovered_mono, action, action_outcome, "
                     "mttr_seconds, mode, policy, resolution, cause, carried, mitigated_mono")


class Knowledge:
    """Knowledge in ``state_dir/agent.db``; thread-safe (one connection under a lock)."""

    def __init__(self, path: Path | None, *, boot: str = "", mode: str = "", policy: str = "",
                 max_rows: int = DEFAULT_MAX_ROWS) -> None:
        if max_rows < 10:
            raise ValueError("max_rows must be at least 10")
        self.path, self.boot, self.mode, self.policy = path, boot, mode, policy
        self.max_rows = max_rows
        self._prune_every = max(1, max_rows // 10)
        self._lock = threading.RLock()  # record() holds it around the writes it batches
        self._conn: sqlite3.Connection | None = None
        self.errors_total = 0
        self.error: str | None = None
        # Each signal's default (Thresholds.defaults), written beside every tuned value:
        # the shell sets it from the loop it builds.
        self.defaults: dict[str, float] = {}
        if path is None:
            self.error = "disabled"
            return
        try:
            conn, _reset = open_db(path)
            migrate(conn, "knowledge", SCHEMA)
            self._conn = conn
        except (OSError, sqlite3.Error, StoreError) as exc:
            self.errors_total += 1
            self.error = f"{path}: {exc}"
            log.error("knowledge unavailable (%s); the loop keeps it in memory only", self.error)

    @classmethod
    def in_state_dir(cls, state_dir: Path, **kwargs: Any) -> Knowledge:
        return cls(state_dir / DB_NAME, **kwargs)

    @property
    def available(self) -> bool:
        return self._conn is not None

    def _write(self, sql: str, args: tuple[Any, ...]) -> int | None:
        if self._conn is None:
            return None
        with self._lock:
            try:
                cur = self._conn.execute(sql, args)
                return int(cur.lastrowid or 0)
            except sqlite3.Error as exc:
                self.errors_total += 1
                if self.error is None:
                    log.error("knowledge write failed: %s", exc)
                self.error = str(exc)
                return None

    # -- writing ----------------------------------------------------------
    def start_run(self) -> int:
        """A new run of the loop begins: incidents a previous run left open are abandoned
        (its in-memory state is gone, so nobody will see them recover). Returns how many."""
        if self._conn is None:
            return 0
        with self._lock:
            try:
                cur = self._conn.execute(
                    "UPDATE incidents SET resolution = 'abandoned' "
                    "WHERE recovered_mono IS NULL AND resolution = ''")
                return int(cur.rowcount)
            except sqlite3.Error as exc:
                self.errors_total += 1
                self.error = str(exc)
                return 0

    def opened(self, inc: Incident, wall: float) -> None:
        self._write(
            "INSERT OR REPLACE INTO incidents (id, boot, class, target, signal, value, threshold,"
            " detected_wall, detected_mono, mode, policy, carried)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (inc.id, self.boot, str(inc.cls), str(inc.target), str(inc.signal), inc.value,
             inc.threshold, wall, inc.detected_at, self.mode, self.policy, inc.carried))
        if inc.id % self._prune_every == 0:
            self._write("DELETE FROM incidents WHERE id <= ?", (inc.id - self.max_rows,))

    def decided(self, inc: Incident) -> None:
        self._write("UPDATE incidents SET decided_mono = ?, action = ?, action_outcome = ?, "
                    "cause = ? WHERE id = ?",
                    (inc.decided_at, inc.action, inc.action_outcome, inc.cause, inc.id))

    def mitigated(self, inc: Incident) -> None:
        self._write("UPDATE incidents SET carried = ?, mitigated_mono = ? WHERE id = ?",
                    (inc.carried, inc.mitigated_at, inc.id))

    def recovered(self, inc: Incident) -> None:
        self._write("UPDATE incidents SET recovered_mono = ?, mttr_seconds = ?, resolution = ? "
                    "WHERE id = ?", (inc.recovered_at, inc.mttr_s, inc.resolution or "recovered",
                                     inc.id))

    def stats_changed(self, cls: str, action: str, s: ActionStats) -> None:
        self._write(
            "INSERT INTO action_stats (class, action, tries, successes, mttr_sum) "
            "VALUES (?,?,?,?,?) ON CONFLICT (class, action) DO UPDATE SET "
            "tries = excluded.tries, successes = excluded.successes, "
            "mttr_sum = excluded.mttr_sum", (cls, action, s.tries, s.successes, s.mttr_sum))

    def threshold_changed(self, signal: str, value: float, reason: str, wall: float) -> None:
        rowid = self._write("INSERT INTO thresholds (wall, signal, value, reason, base) "
                            "VALUES (?,?,?,?,?)",
                            (wall, signal, value, reason, self.defaults.get(signal)))
        if rowid and rowid % self._prune_every == 0:
            self._write("DELETE FROM thresholds WHERE id <= ?", (rowid - self.max_rows,))

    def record(self, step: Step, wall: float) -> None:
        """Everything one loop step changed, in one transaction (the shell calls this after
        each step): a kill leaves Knowledge before or after the step, never halfway (an
        incident recovered but not yet counted in the statistics)."""
        if self._conn is None or not (step.opened or step.decided or step.recovered
                                      or step.mitigated or step.stats or step.thresholds):
            return
        with self._lock:
            errors = self.errors_total
            if self._write("BEGIN IMMEDIATE", ()) is None:
                return
            for inc in step.opened:
                self.opened(inc, wall)
            for inc in step.decided:
                self.decided(inc)
            for inc in step.mitigated:
                self.mitigated(inc)
            for inc in step.recovered:
                self.recovered(inc)
            for cls, action, s in step.stats:
                self.stats_changed(cls, action, s)
            for signal, value, reason in step.thresholds:
                self.threshold_changed(signal, value, reason, wall)
            if self.errors_total != errors or self._write("COMMIT", ()) is None:
                self._write("ROLLBACK", ())  # all of the step or none of it

    # -- reading ----------------------------------------------------------
    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self._conn is None:
            return []
        with self._lock:
            try:
                return list(self._conn.execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                self.errors_total += 1
                self.error = str(exc)
                return []

    def stats(self) -> dict[tuple[str, str], ActionStats]:
        return {(c, a): ActionStats(int(t), int(s), float(m)) for c, a, t, s, m in
                self._read("SELECT class, action, tries, successes, mttr_sum FROM action_stats")}

    def thresholds(self) -> dict[str, float]:
        """The latest value of each signal's threshold."""
        return {signal: value for signal, (value, _base) in self.tuned().items()}

    def tuned(self) -> dict[str, tuple[float, float | None]]:
        """The latest value of each signal's threshold and the default it was tuned from
        (None: written before schema 4, or with no default known)."""
        rows = self._read("SELECT signal, value, base FROM thresholds WHERE id IN "
                          "(SELECT max(id) FROM thresholds GROUP BY signal)")
        return {str(s): (float(v), None if b is None else float(b)) for s, v, b in rows}

    def threshold_history(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._read("SELECT id, wall, signal, value, reason FROM thresholds "
                          "ORDER BY id DESC LIMIT ?", (limit,))
        return [{"id": r[0], "wall": r[1], "signal": r[2], "value": r[3], "reason": r[4]}
                for r in rows[::-1]]

    def last_id(self) -> int:
        rows = self._read("SELECT max(id) FROM incidents")
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def incidents(self, limit: int = 100, open_only: bool = False) -> list[dict[str, Any]]:
        """The newest ``limit`` incidents, oldest first, as the chain the API serves."""
        where = " WHERE recovered_mono IS NULL AND resolution = ''" if open_only else ""
        rows = self._read(f"SELECT {_INCIDENT_COLUMNS} FROM incidents{where} "
                          "ORDER BY id DESC LIMIT ?", (max(0, limit),))
        out = []
        for r in rows[::-1]:
            (iid, boot, cls, target, signal, value, threshold, wall, det, dec, rec, action,
             outcome, mttr, mode, policy, resolution, cause, carried, mitigated) = r
            out.append({
                "id": iid, "boot": boot, "class": cls, "target": target,
                "signal": {"name": signal, "value": value, "threshold": threshold},
                "detected_wall": wall, "detected_mono": det, "decided_mono": dec,
                "recovered_mono": rec,
                "action": {"kind": action, "outcome": outcome} if action else None,
                "state": resolution or ("recovered" if rec is not None else "open"),
                "mttr_seconds": mttr, "mode": mode, "policy": policy, "cause": cause,
                "carried": carried, "mitigated_mono": mitigated,
                "time_to_mitigate_seconds": None if mitigated is None else mitigated - det,
            })
        return out

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
