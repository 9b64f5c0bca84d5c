#!/usr/bin/env python3
"""bench_events: what one event-log append costs the agent's event loop, and the disk.

    .venv/bin/python tests/bench/bench_events.py [--records 5000]

``EventLog.append`` (mesh_agent.store: SQLite, WAL, synchronous=NORMAL, 1 KiB
pages) runs on the agent's event loop, so its latency is what a failover's
bookkeeping or a link event adds there. Measured in the same run against two
baselines that give the same "a record survives kill -9" guarantee:

  jsonl         one JSON line appended and flushed to a file per record (the
                simplest log; no bound, no index, no query)
  sqlite-full   SQLite with its default rollback journal and synchronous=FULL
                (an fsync per commit: what the log would cost without WAL)

One JSON line per figure: wall-clock latency p50/p99 in microseconds and bytes
written to the filesystem per record (``/proc/self/io`` wchar). The 1-minute
load average is in every row: on a shared host the latency tail moves with it.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mesh_agent.store import EventKind, EventLog


def emit(**fields: Any) -> None:
    print(json.dumps({"bench": "events", **fields}), flush=True)


def wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def record(i: int) -> dict[str, Any]:
    return {"kind": "link_down", "subject": f"node{i % 50:02d}", "reason": "timeout",
            "detail": {"interface": "mesh1", "destinations": i % 17, "duration_seconds": 0.0004}}


def measure(name: str, append: Callable[[int], object], records: int) -> None:
    lat = []
    w0 = wchar()
    for i in range(records):
        t0 = time.perf_counter()
        append(i)
        lat.append(time.perf_counter() - t0)
    written = wchar() - w0
    srt = sorted(lat)
    emit(impl=name, figure="append_latency_us", unit="us", records=records,
         p50=round(statistics.median(lat) * 1e6, 1),
         p99=round(srt[min(len(srt) - 1, int(0.99 * len(srt)))] * 1e6, 1),
         max=round(srt[-1] * 1e6, 1), load1=load1())
    emit(impl=name, figure="bytes_written_per_record", unit="B",
         value=round(written / records), records=records)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=5000)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        base = Path(tmp)
        log = EventLog.in_state_dir(base / "eventlog", limits={}, boot_id="bench")

        def append_log(i: int) -> None:
            r = record(i)
            log.append(EventKind.LINK_DOWN, r["subject"], r["reason"], r["detail"])

        measure("event_log", append_log, a.records)
        log.close()

        with (base / "events.jsonl").open("a") as f:
            def append_jsonl(i: int) -> None:
                f.write(json.dumps(record(i)) + "\n")
                f.flush()

            measure("jsonl", append_jsonl, a.records)

        conn = sqlite3.connect(base / "full.db", isolation_level=None)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, kind, subject, reason, detail)")

        def append_full(i: int) -> None:
            r = record(i)
            conn.execute("INSERT INTO events (kind, subject, reason, detail) VALUES (?, ?, ?, ?)",
                         (r["kind"], r["subject"], r["reason"], json.dumps(r["detail"])))

        measure("sqlite-full", append_full, min(a.records, 1000))
        conn.close()


if __name__ == "__main__":
    main()
