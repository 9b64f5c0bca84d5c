"""The event log (mesh_agent.store): order, restarts, bounds, throttling, and crashes.

The crash tests are real: a writer process appending as fast as it can is
killed with SIGKILL at random moments, again and again, on the same file; and
a write-ahead log torn in the middle of a frame is opened as a crash leaves it.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshcore_testkit.crash import committed_ids, kill9_rounds

from mesh_agent.store import Event, EventKind, EventLog, Throttle
from mesh_agent.store.db import AUTOCHECKPOINT_PAGES, DB_NAME, migrate, open_db
from mesh_agent.store.events import DEFAULT_LIMITS, MAX_DETAIL, MAX_TEXT

NO_LIMITS: dict[str, tuple[float, float]] = {}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(tmp_path: Path, **kwargs: object) -> EventLog:
    return EventLog.in_state_dir(tmp_path, boot_id="boot-a", **kwargs)  # type: ignore[arg-type]


def test_append_and_read_in_order_with_a_cursor(tmp_path: Path) -> None:
    log = make(tmp_path, limits=NO_LIMITS)
    ids = [log.append(EventKind.LINK_DOWN, f"n{i}", "timeout", {"i": i}) for i in range(10)]
    assert ids == list(range(1, 11))
    newest = log.query(limit=3)
    assert [e.id for e in newest] == [8, 9, 10]  # the newest three, oldest first
    page = log.query(after=4, limit=3)
    assert [e.id for e in page] == [5, 6, 7]
    e = page[0]
    assert (e.kind, e.subject, e.reason, e.detail, e.boot) == (
        "link_down", "n4", "timeout", {"i": 4}, "boot-a")
    assert log.query(after=10) == []
    assert log.bounds() == (1, 10)


def test_filters_by_kind_and_subject(tmp_path: Path) -> None:
    log = make(tmp_path, limits=NO_LIMITS)
    log.append(EventKind.LINK_UP, "n1")
    log.append(EventKind.LINK_DOWN, "n1", "carrier")
    log.append(EventKind.FAILOVER, "n1", "carrier", {"duration_seconds": 0.0004})
    log.append(EventKind.LINK_DOWN, "n2", "timeout")
    downs = log.query(after=0, kinds=[EventKind.LINK_DOWN])
    assert [(e.subject, e.reason) for e in downs] == [("n1", "carrier"), ("n2", "timeout")]
    about_n1 = log.query(after=0, subject="n1", kinds=["link_down", "failover"])
    assert [e.kind for e in about_n1] == ["link_down", "failover"]
    assert about_n1[1].detail == {"duration_seconds": 0.0004}


def test_since_keeps_the_records_from_a_wall_clock_time(tmp_path: Path) -> None:
    wall = [1000.0]
    log = make(tmp_path, limits=NO_LIMITS, wall=lambda: wall[0])
    for t in (1000.0, 2000.0, 3000.0):
        wall[0] = t
        log.append(EventKind.LINK_DOWN, "n1", "timeout", {"t": t})
    assert [e.wall for e in log.query(after=0, since=2000.0)] == [2000.0, 3000.0]
    assert [e.wall for e in log.query(since=2500.0, limit=5)] == [3000.0]
    assert log.query(after=0, since=3500.0) == []


def test_survives_restart_and_never_reuses_an_id(tmp_path: Path) -> None:
    log = make(tmp_path, limits=NO_LIMITS, max_records=5)
    for i in range(12):
        log.append(EventKind.LINK_UP, f"n{i}")
    log.close()
    again = make(tmp_path, limits=NO_LIMITS, max_records=5)
    before = again.query(after=0, limit=100)
    assert before and before[-1].subject == "n11"
    new_id = again.append(EventKind.LINK_DOWN, "n0", "timeout")
    assert new_id == 13  # AUTOINCREMENT: the cursor of a reader stays valid


def test_bounded_in_records_and_on_disk(tmp_path: Path) -> None:
    log = make(tmp_path, limits=NO_LIMITS, max_records=100)
    for i in range(5000):
        log.append(EventKind.ADVERT_REJECTED, f"origin-{i}", "bad_signature", {"seq": i})
    oldest, newest = log.bounds()
    kept = newest - oldest + 1
    assert newest == 5000
    assert 100 <= kept <= 110  # the cap plus at most one pruning batch
    assert [e.subject for e in log.query(limit=1)] == ["origin-4999"]
    size = sum(p.stat().st_size for p in tmp_path.glob(DB_NAME + "*"))
    # ~110 small rows in 1 KiB pages, and a WAL that the backstop checkpoint keeps
    # under AUTOCHECKPOINT_PAGES frames even when nobody calls checkpoint().
    assert size < AUTOCHECKPOINT_PAGES * (1024 + 24) + 200_000, size


def test_long_fields_are_capped(tmp_path: Path) -> None:
    log = make(tmp_path, limits=NO_LIMITS)
    log.append(EventKind.ADVERT_REJECTED, "x" * 10_000, "y" * 1000, {"blob": "z" * 10_000})
    e = log.query(limit=1)[0]
    assert len(e.subject) == MAX_TEXT and len(e.reason) == MAX_TEXT
    assert e.detail == {"truncated": True, "bytes": 10_011}
    assert MAX_DETAIL < 10_011


def test_a_storm_is_throttled_and_counted(tmp_path: Path) -> None:
    clock = Clock()
    log = make(tmp_path, clock=clock)
    rate, burst = DEFAULT_LIMITS[EventKind.ADVERT_REJECTED]
    written = [log.append(EventKind.ADVERT_REJECTED, "mallory", "bad_signature")
               for _ in range(100)]
    assert sum(w is not None for w in written) == burst
    assert log.suppressed_total == {"advert_rejected": 100 - burst}
    # Another reason has its own bucket: a flood of one kind of garbage hides no other.
    assert log.append(EventKind.ADVERT_REJECTED, "n3", "replayed") is not None
    # Link events are not throttled by the advert storm.
    assert log.append(EventKind.LINK_DOWN, "n1", "timeout") is not None
    clock.t += 1.0 / rate
    log.append(EventKind.ADVERT_REJECTED, "mallory", "bad_signature")
    last = log.query(kinds=[EventKind.ADVERT_REJECTED], limit=1)[0]
    assert last.detail == {"suppressed_before": 100 - burst}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["r1", "r2"]),
                  st.floats(min_value=0, max_value=2)),
        max_size=300,
    )
)
def test_throttle_never_exceeds_its_rate_and_loses_no_count(
    offers: list[tuple[str, str, float]],
) -> None:
    limits = {"a": (2.0, 5.0), "b": (0.5, 1.0)}  # "c" is not throttled
    throttle = Throttle(limits)
    now = 0.0
    admitted: dict[str, int] = {}
    offered: dict[str, int] = {}
    reported: dict[str, int] = {}
    for kind, reason, dt in offers:
        now += dt
        key = f"{kind}:{reason}"
        offered[key] = offered.get(key, 0) + 1
        ok, suppressed = throttle.admit(kind, reason, now)
        if ok:
            admitted[key] = admitted.get(key, 0) + 1
            reported[key] = reported.get(key, 0) + suppressed
    for key, n in offered.items():
        kind = key.split(":")[0]
        if kind not in limits:
            assert admitted[key] == n
            continue
        rate, burst = limits[kind]
        assert admitted.get(key, 0) <= burst + rate * now + 1e-9
        # Every suppressed offer is either reported by a later record or still pending.
        pending = throttle._suppressed.get(key, 0)
        assert admitted.get(key, 0) + reported.get(key, 0) + pending == n


def test_overflow_keys_share_one_bucket() -> None:
    throttle = Throttle({"k": (0.0, 1.0)}, max_keys=2)
    assert throttle.admit("k", "a", 0)[0] and throttle.admit("k", "b", 0)[0]
    assert throttle.admit("k", "c", 0)[0]  # the overflow bucket's one token
    assert not throttle.admit("k", "d", 0)[0]  # shares it


def test_start_records_how_the_previous_run_ended(tmp_path: Path) -> None:
    def start(boot: str) -> Event:
        log = EventLog.in_state_dir(tmp_path, boot_id=boot)
        log.record_start(version="t")
        found = log.query(limit=1)[0]
        log.close()
        return found

    assert start("boot-a").reason == "first_start"
    assert start("boot-a").reason == "after_crash"  # started, never stopped
    log = EventLog.in_state_dir(tmp_path, boot_id="boot-a")
    log.record_stop("signal", exit_code=0)
    log.close()
    assert start("boot-a").reason == "after_stop"
    first = start("boot-b")  # started under boot-a, no stop, the kernel rebooted
    assert first.reason == "after_reboot" and first.detail == {"version": "t"}


def test_garbage_file_is_set_aside_and_the_log_opens(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(os.urandom(8192))
    log = make(tmp_path)
    assert log.available
    first = log.query(limit=10)
    assert [e.kind for e in first] == ["log_reset"]
    assert (tmp_path / (DB_NAME + ".corrupt")).exists()
    assert log.append(EventKind.LINK_UP, "n1") == 2


def test_a_schema_from_a_newer_agent_is_set_aside(tmp_path: Path) -> None:
    conn, _ = open_db(tmp_path / DB_NAME)
    migrate(conn, "events", [["CREATE TABLE events (id INTEGER PRIMARY KEY)"], ["SELECT 1"],
                             ["SELECT 1"]])
    conn.close()
    log = make(tmp_path)
    assert [e.kind for e in log.query(limit=5)] == ["log_reset"]


def test_unusable_state_dir_leaves_the_agent_running(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    log = EventLog.in_state_dir(blocker / "state")
    assert not log.available and log.errors_total == 1 and log.error
    assert log.append(EventKind.LINK_UP, "n1") is None
    assert log.query() == [] and log.bounds() == (0, 0)


def test_a_full_disk_is_counted_not_raised(tmp_path: Path) -> None:
    log = make(tmp_path, limits=NO_LIMITS)
    assert log._conn is not None
    pages = log._conn.execute("PRAGMA page_count").fetchone()[0]
    log._conn.execute(f"PRAGMA max_page_count={pages}")  # as if the disk were full
    results = [log.append(EventKind.LINK_UP, "n1", detail={"pad": "x" * 1500})
               for _ in range(20)]
    assert results[-1] is None and log.errors_total >= 1 and "full" in (log.error or "")


def test_readers_and_a_writer_in_threads(tmp_path: Path) -> None:
    log = make(tmp_path, limits=NO_LIMITS)
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        cursor = 0
        try:
            while not stop.is_set():
                for e in log.query(after=cursor, limit=50):
                    assert e.id == cursor + 1  # no gap, no reordering
                    cursor = e.id
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    for i in range(2000):
        log.append(EventKind.LINK_UP, f"n{i}")
    stop.set()
    for t in readers:
        t.join()
    assert errors == []


WRITER = """
import sys
from pathlib import Path
from mesh_agent.store import EventKind, EventLog
log = EventLog.in_state_dir(Path(sys.argv[1]), limits={}, max_records=int(sys.argv[2]))
log.record_start(pid=__import__("os").getpid())
print("started", flush=True)
i = 0
while True:
    i += 1
    rowid = log.append(EventKind.ADVERT_REJECTED, f"n{i % 50}", "bad_signature",
                       {"i": i, "pad": "x" * (i % 700)})
    print(rowid, flush=True)
"""


def test_kill_9_while_writing_loses_at_most_the_last_record(tmp_path: Path) -> None:
    """SIGKILL a writer at random moments, 15 times on one file.

    After each kill the file opens and passes SQLite's integrity check, every
    id the writer reported as committed is there, the ids have no gap, and at
    most one record more than reported is there (committed, not yet printed).
    The next start knows the previous run crashed.
    """
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    state = tmp_path / "state"
    acknowledged = 0
    # max_records far above what 15 short runs write: nothing is pruned, so every
    # start record is still there for the last check (pruning has its own tests).
    for run in kill9_rounds(script, [str(state), "10000000"], 15, random.Random(1)):
        assert run.first == ["started"]
        acknowledged += 1  # the start record, committed before "started" was printed
        if run.acknowledged is not None:
            acknowledged = run.acknowledged
        ids = committed_ids(state / DB_NAME, "events")
        assert acknowledged <= ids[-1] <= acknowledged + 1
        acknowledged = ids[-1]  # the start record of the next run comes after these
    log = make(state, limits=NO_LIMITS)
    starts = log.query(after=0, kinds=[EventKind.AGENT_STARTED], limit=100)
    assert [e.reason for e in starts] == ["first_start"] + ["after_crash"] * 14
    assert log.bounds()[1] > 1000  # the writers did write between the kills


def test_a_torn_write_ahead_log_opens_at_the_last_whole_commit(tmp_path: Path) -> None:
    log = make(tmp_path, limits=NO_LIMITS)
    for i in range(50):
        log.append(EventKind.LINK_UP, f"n{i}", detail={"i": i})
    wal = tmp_path / (DB_NAME + "-wal")
    data = wal.read_bytes()
    # Copy the files as a crash leaves them: the last frame cut in half.
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / DB_NAME).write_bytes((tmp_path / DB_NAME).read_bytes())
    (torn / (DB_NAME + "-wal")).write_bytes(data[: len(data) - 600])
    log.close()
    reopened = make(torn, limits=NO_LIMITS)
    assert reopened.available
    events = reopened.query(after=0, limit=100)
    assert [e.kind for e in events][:1] != ["log_reset"]  # recovered, not reset
    assert 48 <= len(events) <= 49
    assert [e.detail["i"] for e in events] == list(range(len(events)))


@pytest.mark.parametrize("kind", list(EventKind))
def test_every_kind_round_trips(tmp_path: Path, kind: EventKind) -> None:
    log = make(tmp_path, limits=NO_LIMITS)
    log.append(kind, "s", "r", {"k": 1})
    e = log.query(limit=1)[0]
    assert EventKind(e.kind) is kind and e.as_dict()["detail"] == {"k": 1}


def test_v1_events_pages_with_a_cursor_and_reports_gaps(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from mesh_agent.api.events import events_endpoint

    log = make(tmp_path, limits=NO_LIMITS, max_records=20)
    client = TestClient(Starlette(routes=[events_endpoint("n1", log).route()]))
    for i in range(10):
        log.append(EventKind.LINK_UP if i % 2 else EventKind.LINK_DOWN, f"n{i}", "timeout")
    body = client.get("/v1/events", params={"limit": 3}).json()
    assert [e["id"] for e in body["events"]] == [8, 9, 10]
    assert (body["node"], body["oldest_id"], body["newest_id"], body["next"], body["gap"]) == (
        "n1", 1, 10, 10, False)
    page = client.get("/v1/events", params={"after": 0, "limit": 4}).json()
    assert [e["id"] for e in page["events"]] == [1, 2, 3, 4] and page["next"] == 4
    downs = client.get("/v1/events", params={"after": 4, "kind": "link_down"}).json()
    assert [e["subject"] for e in downs["events"]] == ["n4", "n6", "n8"]
    assert downs["next"] == 10  # nothing else matched up to the newest
    empty = client.get("/v1/events", params={"after": 10}).json()
    assert empty["events"] == [] and empty["next"] == 10
    for i in range(40):
        log.append(EventKind.LINK_UP, f"m{i}")
    behind = client.get("/v1/events", params={"after": 10, "limit": 5}).json()
    assert behind["gap"] is True and behind["events"][0]["id"] == behind["oldest_id"]
    assert client.get("/v1/events", params={"kind": "nonsense"}).status_code == 422
    assert client.get("/v1/events", params={"limit": 100_000}).status_code == 422
    assert client.get("/v1/events", params={"after": -1}).status_code == 422


def test_checkpoints_from_another_thread_keep_the_wal_small(tmp_path: Path) -> None:
    log = make(tmp_path, limits=NO_LIMITS)
    wal = tmp_path / (DB_NAME + "-wal")
    sizes = []
    result: list[tuple[int, int]] = []
    for round_ in range(3):
        for i in range(300):
            log.append(EventKind.LINK_UP, f"n{round_}.{i}")
        worker = threading.Thread(target=lambda: result.append(log.checkpoint()))
        worker.start()
        worker.join()
        frames, copied = result[-1]
        assert frames > 0 and copied == frames
        sizes.append(wal.stat().st_size)
    assert sizes[2] <= sizes[0] * 1.1  # each round reuses the WAL from its start
    assert [e.subject for e in log.query(limit=1)] == ["n2.299"]
