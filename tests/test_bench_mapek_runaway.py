"""bench_mapek_runaway's bookkeeping, no lab: which incidents a round counts, the summary."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from meshcore_testkit.loader import load_path

BENCH = Path(__file__).parent / "bench" / "bench_mapek_runaway.py"


def bench() -> ModuleType:
    return load_path("bench_mapek_runaway", BENCH, register=True)


def inc(cls: str, at: float, mttr: float | None, kind: str | None = None,
        outcome: str = "applied") -> dict[str, object]:
    return {"class": cls, "detected_wall": at, "mttr_seconds": mttr, "target": "self:",
            "signal": {"name": "lateness", "value": 0.4, "threshold": 0.25},
            "action": {"kind": kind, "outcome": outcome} if kind else None}


def test_a_round_counts_the_starved_incidents_detected_in_its_window() -> None:
    b = bench()
    incs = [inc("starved_node", 90.0, 20.0, "lengthen_hello"),  # before the injection
            inc("starved_node", 106.0, 12.5, "restart_unit"),
            inc("starved_node", 130.0, None, "lengthen_hello"),  # still open
            inc("lossy_link", 110.0, 5.0, "quarantine_link"),  # another class
            inc("starved_node", 300.0, 3.0)]  # after the round's settle
    view = {"incidents": incs, "action_stats": [
        {"class": "starved_node", "action": "restart_unit", "tries": 3, "successes": 1},
        {"class": "lossy_link", "action": "none", "tries": 9, "successes": 9}]}
    blamed = [{"action": "restart_unit", "by_class": "route_churn", "after_seconds": 20.0,
               "incident": 7, "wall": 126.0},
              {"action": "restart_unit", "by_class": "route_churn", "after_seconds": 20.0,
               "incident": 5, "wall": 60.0}]  # an earlier round's
    line = b.round_line(2, "learned", "node04", {"injected_wall": 100.0, "runaway_s": 8.1,
                                                  "ended_by": "restart"}, view, blamed, 250.0)
    assert line["incidents"] == 2 and line["still_open"] == 1
    assert line["actions"] == {"restart_unit:applied": 1, "lengthen_hello:applied": 1}
    assert line["detect_s"] == 6.0 and line["mttr_max_s"] == 12.5
    assert line["runaway_s"] == 8.1 and line["ended_by"] == "restart"
    assert (line["signal"], line["threshold"]) == ("lateness", 0.25)
    # The other classes in the window, the round's charges, the class's arms after it.
    assert line["others"] == [{"class": "lossy_link", "target": "self:",
                               "action": "quarantine_link", "outcome": "applied",
                               "detect_s": 10.0, "mttr_s": 5.0}]
    assert line["charges"] == [{"action": "restart_unit", "by_class": "route_churn",
                                "after_seconds": 20.0}]
    assert line["stats"] == {"restart_unit": [3, 1]}


def test_the_summary_compares_the_first_and_last_rounds() -> None:
    b = bench()
    rows = [{"round": r, "policy": "learned", "runaway_s": s, "mttr_max_s": m,
             "ended_by": "restart" if s < 150 else "removal", "still_open": 0}
            for r, s, m in ((1, 150.2, 146.0), (2, 150.1, 148.0), (3, 12.0, 9.0),
                            (4, 10.5, 8.0), (5, 9.9, 7.5))]
    line = b.summary(rows, 2, 1, 0.5, "learned")
    assert line["runaway_s_p50_first"] == pytest.approx(150.2, abs=0.1)
    assert 9.9 <= line["runaway_s_p50_last"] <= 10.5  # the last two rounds
    assert (line["restarts_first"], line["restarts_last"], line["restarts_all"]) == (0, 2, 3)
    assert line["false_alarms_per_node_hour"] == 2.0


def test_summary_of_remakes_the_summary_from_the_round_lines(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    b = bench()
    out = tmp_path / "run.jsonl"
    lines = [{"bench": "mapek_runaway", "round": r, "policy": p, "runaway_s": s,
              "mttr_max_s": s - 3, "ended_by": "removal", "still_open": 0}
             for r in (1, 2) for p, s in (("fixed", 150.0), ("learned", 40.0 * r))]
    lines += [{"bench": "mapek_runaway", "summary": p, "false_alarms": 0,
               "false_alarms_per_node_hour": 0.0} for p in ("fixed", "learned")]
    out.write_text("[a log line]\n" + "".join(json.dumps(x) + "\n" for x in lines))
    assert b.resummarise(out, 1) == 0
    got = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [g["policy"] for g in got] == ["fixed", "learned"]
    assert got[1]["runaway_s_p50_first"] == 40.0 and got[1]["runaway_s_p50_last"] == 80.0
    assert all(g["false_alarms_per_node_hour"] == 0.0 and g["figure"] == "summary" for g in got)


def test_choice_probabilities_are_the_learned_policys_own_odds() -> None:
    b = bench()
    fresh = b.choice_probabilities({})
    assert sum(fresh.values()) == pytest.approx(1.0, abs=0.002)
    # A fresh node favours the rule (three pseudo-successes) and still explores.
    assert max(fresh, key=lambda a: fresh[a]) == "lengthen_hello"
    assert 0.05 < fresh["restart_unit"] < 0.5
    taught = b.choice_probabilities({"lengthen_hello": [5, 0], "restart_unit": [5, 5],
                                     "none": [2, 0]})
    assert taught["restart_unit"] > 0.95
    assert b.choice_probabilities({}, seed=3) == b.choice_probabilities({}, seed=3)


def test_the_summary_says_what_learned_would_pick_after_the_first_and_last_rounds() -> None:
    b = bench()
    rows = [{"round": r, "policy": "learned", "runaway_s": 150.0, "mttr_max_s": 145.0,
             "ended_by": "removal", "still_open": 0, "stats": st}
            for r, st in ((1, {"lengthen_hello": [1, 0]}),
                          (2, {"lengthen_hello": [1, 0], "restart_unit": [1, 1]}),
                          (3, {"lengthen_hello": [1, 0], "restart_unit": [2, 2]}))]
    line = b.summary(rows, 1, 0, 1.0, "learned")
    first, last = line["p_next_after_first"], line["p_next_after_last"]
    assert last["restart_unit"] > first["restart_unit"]
    assert b.summary(rows, 1, 0, 1.0, "fixed")["p_next_after_last"] is None
