"""Knowledge in the agent's SQLite database: the chain, statistics, thresholds; bounded,
migrated by version, shared with the event log's file, and safe against kill -9."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from meshcore_testkit.crash import committed_ids, kill9_rounds

from mesh_agent.mapek import FixedPolicy, Knowledge, LinkSample, MapeK, Observation
from mesh_agent.mapek.analyze import Incident, IncidentClass
from mesh_agent.mapek.knowledge import SCHEMA
from mesh_agent.mapek.monitor import Signal, Target
from mesh_agent.mapek.plan import ActionStats
from mesh_agent.store import EventKind, EventLog
from mesh_agent.store.db import DB_NAME, open_db


def lossy_run(loop: MapeK, k: Knowledge, start: float = 0.0) -> None:
    for i, loss in enumerate([0.0, 0.5, 0.5, 0.5] + [0.0] * 20):
        at = start + i * 5.0
        k.record(loop.step(Observation(at, (LinkSample("b", loss, 0.002),))), 1_800_000_000 + at)


def test_the_chain_is_recorded_and_survives_a_reopen(tmp_path: Path) -> None:
    k = Knowledge.in_state_dir(tmp_path, boot="boot-1", mode="enforce", policy="fixed")
    loop = MapeK("a", "enforce", FixedPolicy(), 0.05)
    lossy_run(loop, k)
    [inc] = k.incidents()
    assert inc["class"] == "lossy_link" and inc["target"] == "link:b"
    assert inc["signal"] == {"name": "loss", "value": 0.5, "threshold": 0.2}
    assert inc["action"] == {"kind": "quarantine_link", "outcome": "applied"}
    assert inc["state"] == "recovered" and inc["mttr_seconds"] == 10.0
    assert inc["detected_mono"] == 10.0 and inc["decided_mono"] == 10.0
    assert (inc["mode"], inc["policy"]) == ("enforce", "fixed")
    k.close()
    again = Knowledge.in_state_dir(tmp_path, boot="boot-2")
    assert again.incidents() == [{**inc, "state": "recovered"}]
    assert again.stats() == {("lossy_link", "quarantine_link"): ActionStats(1, 1, 10.0)}
    assert again.last_id() == 1
    # A loop built from it starts where the last one stopped.
    loop2 = MapeK("a", "enforce", FixedPolicy(), 0.05, stats=again.stats(),
                  next_id=again.last_id() + 1)
    lossy_run(loop2, again, start=1000.0)
    assert [i["id"] for i in again.incidents()] == [1, 2]
    assert again.stats()[("lossy_link", "quarantine_link")].tries == 2


def test_an_incident_left_open_by_an_earlier_run_is_abandoned(tmp_path: Path) -> None:
    k = Knowledge.in_state_dir(tmp_path, boot="b1")
    assert k.start_run() == 0
    k.opened(Incident(7, IncidentClass.SLOW_LINK, Target("link", "c"), Signal.RTT, 0.5, 0.1,
                      3.0), 1_800_000_000.0)
    assert [i["state"] for i in k.incidents(open_only=True)] == ["open"]
    k.close()
    again = Knowledge.in_state_dir(tmp_path, boot="b1")  # the same kernel boot, a new run
    assert again.start_run() == 1 and again.start_run() == 0
    assert [i["state"] for i in again.incidents()] == ["abandoned"]


def test_a_link_incidents_time_to_mitigate(tmp_path: Path) -> None:
    k = Knowledge.in_state_dir(tmp_path, boot="b1")
    inc = Incident(4, IncidentClass.LOSSY_LINK, Target("link", "c"), Signal.LOSS, 0.5, 0.2, 3.0,
                   carried=5)
    k.opened(inc, 0.0)
    [row] = k.incidents()
    assert (row["carried"], row["mitigated_mono"], row["time_to_mitigate_seconds"]) == (
        5, None, None)
    inc.mitigated_at = 8.0
    k.mitigated(inc)
    [row] = k.incidents()
    assert (row["carried"], row["mitigated_mono"], row["time_to_mitigate_seconds"]) == (
        5, 8.0, 5.0)


def test_a_gone_incident_has_no_mttr(tmp_path: Path) -> None:
    k = Knowledge.in_state_dir(tmp_path, boot="b1")
    inc = Incident(3, IncidentClass.LOSSY_LINK, Target("link", "c"), Signal.LOSS, 0.5, 0.2, 3.0)
    k.opened(inc, 0.0)
    inc.recovered_at, inc.resolution = 9.0, "gone"
    k.recovered(inc)
    [row] = k.incidents()
    assert (row["state"], row["mttr_seconds"], row["recovered_mono"]) == ("gone", None, 9.0)


def test_thresholds_history_and_latest(tmp_path: Path) -> None:
    k = Knowledge.in_state_dir(tmp_path)
    k.threshold_changed("loss", 0.22, "false_alarm:1", 1.0)
    k.threshold_changed("loss", 0.24, "false_alarm:2", 2.0)
    k.threshold_changed("rtt", 0.2, "false_alarm:3", 3.0)
    assert k.thresholds() == {"loss": 0.24, "rtt": 0.2}
    assert [h["reason"] for h in k.threshold_history()] == [
        "false_alarm:1", "false_alarm:2", "false_alarm:3"]


def test_a_tuned_value_keeps_the_default_it_was_tuned_from(tmp_path: Path) -> None:
    k = Knowledge.in_state_dir(tmp_path)
    k.threshold_changed("loss", 0.22, "false_alarm:1", 1.0)  # no default known
    k.defaults = {"loss": 0.2}
    k.threshold_changed("loss", 0.24, "false_alarm:2", 2.0)
    k.threshold_changed("rtt", 0.2, "false_alarm:3", 3.0)  # no default for this signal
    assert k.tuned() == {"loss": (0.24, 0.2), "rtt": (0.2, None)}


def test_version_3_thresholds_come_back_with_no_default(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    conn, _ = open_db(path)
    from mesh_agent.store.db import migrate

    migrate(conn, "knowledge", SCHEMA[:3])
    conn.execute("INSERT INTO thresholds (wall, signal, value, reason) "
                 "VALUES (1.0, 'link_downs', 3.6, 'false_alarm:4')")
    conn.commit()
    conn.close()
    assert Knowledge(path).tuned() == {"link_downs": (3.6, None)}


def test_version_6_drops_the_link_classes_mttr_judged_statistics(tmp_path: Path) -> None:
    """Schema 6: link incidents are judged by their time to mitigate from then on, so the
    link classes' statistics of the MTTR reward go; the other classes' stay."""
    path = tmp_path / DB_NAME
    conn, _ = open_db(path)
    from mesh_agent.store.db import migrate

    migrate(conn, "knowledge", SCHEMA[:5])
    for cls in ("lossy_link", "flapping_link", "slow_link", "starved_node"):
        conn.execute("INSERT INTO action_stats (class, action, tries, successes, mttr_sum) "
                     "VALUES (?, 'none', 4, 2, 80.0)", (cls,))
    conn.commit()
    conn.close()
    assert set(Knowledge(path).stats()) == {("starved_node", "none")}


def test_bounded(tmp_path: Path) -> None:
    k = Knowledge.in_state_dir(tmp_path, max_rows=50)
    for i in range(1, 501):
        k.opened(Incident(i, IncidentClass.LOSSY_LINK, Target("link", "b"), Signal.LOSS, 0.5,
                          0.2, float(i)), float(i))
        k.threshold_changed("loss", 0.2, f"relax:{i}", float(i))
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("SELECT count(*) FROM incidents").fetchone()[0] <= 55
    assert conn.execute("SELECT count(*) FROM thresholds").fetchone()[0] <= 55
    assert conn.execute("SELECT max(id) FROM incidents").fetchone()[0] == 500


def test_version_1_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    conn, _ = open_db(path)
    from mesh_agent.store.db import migrate

    migrate(conn, "knowledge", SCHEMA[:1])
    conn.execute("INSERT INTO incidents (id, boot, class, target, signal, value, threshold,"
                 " detected_wall, detected_mono) VALUES (1, 'b', 'lossy_link', 'link:b',"
                 " 'loss', 0.5, 0.2, 1.0, 2.0)")
    conn.close()
    k = Knowledge(path, boot="b")
    [inc] = k.incidents()
    assert (inc["id"], inc["mode"], inc["policy"], inc["state"]) == (1, "", "", "open")
    assert inc["cause"] is None and inc["carried"] is None
    assert inc["time_to_mitigate_seconds"] is None
    assert k.start_run() == 1
    row = sqlite3.connect(path).execute(
        "SELECT version FROM schema_versions WHERE component = 'knowledge'").fetchone()
    assert row[0] == len(SCHEMA) == 6


def test_one_file_with_the_event_log(tmp_path: Path) -> None:
    events = EventLog.in_state_dir(tmp_path, limits={})
    k = Knowledge.in_state_dir(tmp_path)
    events.append(EventKind.LINK_UP, "b")
    k.threshold_changed("loss", 0.3, "x", 1.0)
    assert events.checkpoint()[0] >= 0  # the log's checkpoint covers the shared file
    components = dict(sqlite3.connect(tmp_path / DB_NAME).execute(
        "SELECT component, version FROM schema_versions").fetchall())
    assert components == {"events": 1, "knowledge": len(SCHEMA)}


def test_unavailable_knowledge_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    k = Knowledge(blocker / "sub" / DB_NAME)
    assert not k.available and k.errors_total == 1
    k.opened(Incident(1, IncidentClass.LOSSY_LINK, Target("link", "b"), Signal.LOSS, 0.5, 0.2,
                      0.0), 0.0)
    assert k.incidents() == [] and k.stats() == {} and k.last_id() == 0
    assert Knowledge(None).error == "disabled"


WRITER = """
import sys
from pathlib import Path
from mesh_agent.mapek import Knowledge, Step
from mesh_agent.mapek.analyze import Incident, IncidentClass
from mesh_agent.mapek.monitor import Signal, Target
from mesh_agent.mapek.plan import ActionStats
k = Knowledge.in_state_dir(Path(sys.argv[1]), boot="w", max_rows=100000)
i = k.last_id()
s = k.stats().get(("lossy_link", "none"), ActionStats())
print("started", i, flush=True)
while True:
    i += 1
    inc = Incident(i, IncidentClass.LOSSY_LINK, Target("link", f"n{i % 50}"), Signal.LOSS,
                   0.5, 0.2, float(i), decided_at=float(i), action="none", action_outcome="noop",
                   recovered_at=i + 1.0)
    s.record(True, 1.0)
    k.record(Step(opened=[inc], decided=[inc], recovered=[inc],
                  stats=[("lossy_link", "none", s)],
                  thresholds=[("loss", 0.2 + (i % 10) / 100, f"relax:{i}")]), float(i))
    print(i, flush=True)
"""


def test_kill_9_while_writing_keeps_a_consistent_knowledge(tmp_path: Path) -> None:
    """SIGKILL a writer at random moments, 10 times: the file opens and passes the
    integrity check, every step reported written is there, and each step is there whole
    or not at all (the statistics count exactly the incidents recorded)."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    state = tmp_path / "state"
    acknowledged = 0
    for run in kill9_rounds(script, [str(state)], 10, random.Random(2), pause=(0.05, 0.3)):
        assert run.first[0] == "started" and int(run.first[1]) >= acknowledged
        if run.acknowledged is not None:
            acknowledged = run.acknowledged
        ids = committed_ids(state / DB_NAME, "incidents")
        conn = sqlite3.connect(state / DB_NAME)
        tries = conn.execute("SELECT tries FROM action_stats").fetchone()
        changes = conn.execute("SELECT count(*) FROM thresholds").fetchone()[0]
        conn.close()
        assert acknowledged <= ids[-1] <= acknowledged + 1
        assert tries is not None and tries[0] == ids[-1] == changes
        acknowledged = ids[-1]
    k = Knowledge.in_state_dir(state)
    assert k.last_id() > 500  # the writers did write between the kills
    assert all(i["state"] == "recovered" for i in k.incidents(limit=1000))
