"""Crash tests: a writer process killed with SIGKILL at random moments, again and again.

Shared by the event log's and Knowledge's ``kill -9`` tests. The writer is a script
that prints a first line (``started ...``) once it has opened its store, then the id
of each record after its commit. :func:`kill9_rounds` runs it, kills it at a random
moment and hands back what it had acknowledged; :func:`committed_ids` opens the file
as the next start would and checks what every such test checks first.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Killed:
    first: list[str]  # the writer's first line, split ("started", ...)
    acknowledged: int | None  # the last id it printed before the kill (None: none)


def kill9_rounds(script: Path, args: Sequence[str], rounds: int, rng: random.Random,
                 pause: tuple[float, float] = (0.05, 0.4)) -> Iterator[Killed]:
    """Run ``python script *args`` *rounds* times, each killed after a random pause."""
    for _ in range(rounds):
        proc = subprocess.Popen([sys.executable, str(script), *args],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        time.sleep(rng.uniform(*pause))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
        lines = [line for line in out.split("\n") if line.strip().isdigit()]
        yield Killed(first, int(lines[-1]) if lines else None)


def committed_ids(db: Path, table: str) -> list[int]:
    """The ids in *table* after a crash: the file passes SQLite's quick check, and the
    ids run 1, 2, ... with no gap and no reordering."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        ids = [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY id")]
    finally:
        conn.close()
    assert ids == list(range(1, len(ids) + 1)), "a gap or a reordering"
    return ids
