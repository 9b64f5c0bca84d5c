"""bench_maintenance_window's bookkeeping, no lab: which incidents a run counts and how."""

from __future__ import annotations

from pathlib import Path

import pytest
from meshcore_testkit.loader import load_path

BENCH = Path(__file__).parent / "bench" / "bench_maintenance_window.py"


def inc(at: float, kind: str, outcome: str, state: str = "recovered") -> dict[str, object]:
    return {"detected_wall": at, "state": state, "action": {"kind": kind, "outcome": outcome}}


def test_a_run_counts_its_incidents_by_what_the_loop_did(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    b = load_path("bench_maintenance_window", BENCH, register=True)
    per_node = {
        "node01": [inc(90.0, "quarantine_link", "applied"),  # before the run
                   inc(105.0, "none", "maintenance"),
                   inc(110.0, "hold_down_link", "applied", "open")],  # decided after it
        "node02": [inc(120.0, "none", "maintenance"),
                   inc(250.0, "lengthen_hello", "applied")],  # in the settle
        "node03": [inc(400.0, "none", "attributed")],  # after the settle
    }
    monkeypatch.setattr(b, "incidents", lambda n: per_node[n])
    monkeypatch.setattr(b, "window_open", lambda n: n == "node03")
    line = b.run_line("window", 3, sorted(per_node), 100.0, 200.0, 300.0, 9)
    assert (line["incidents"], line["nodes_with_incidents"], line["restarts"]) == (4, 2, 9)
    assert line["outcomes"] == {"none:maintenance": 2, "hold_down_link:applied": 1,
                                "lengthen_hello:applied": 1}
    assert (line["applied"], line["in_maintenance"], line["decided_after"]) == (2, 2, 1)
    assert (line["still_open"], line["windows_left_open"], line["wall_s"]) == (1, 1, 100.0)
    # Without a window nothing is "decided after" it.
    assert b.run_line("none", 4, sorted(per_node), 100.0, 200.0, 300.0, 9)["decided_after"] == 0
