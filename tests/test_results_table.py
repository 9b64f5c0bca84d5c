"""The results table in docs/results.md is generated from the JSON lines under docs/results/
(meshcore_tools.results): it cannot drift from the data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from meshcore_tools import results

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_table_is_what_the_data_gives() -> None:
    document = results.RESULTS_MD.read_text()
    assert results.splice(document, results.generate()) == document, (
        "docs/results.md differs from docs/results/: run `make results` and commit")


def test_every_raw_file_is_indexed_or_says_why_not() -> None:
    index = yaml.safe_load((results.RESULTS_DIR / "index.yml").read_text())
    indexed = {name for run in index["runs"] for name in run["files"]}
    skipped = set(index.get("not_tabled", {}))
    raw = {p.name for p in results.RESULTS_DIR.glob("*.jsonl")}
    assert raw - indexed - skipped == set()
    assert (indexed | skipped) - raw == set()


def _write(tmp: Path, index: dict, files: dict[str, list[dict]]) -> Path:
    (tmp / "index.yml").write_text(yaml.safe_dump(index))
    for name, lines in files.items():
        (tmp / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tmp


FIG = {"name": "outage", "match": {"figure": "outage_ms", "impl": "ours"},
       "exclude": {"label": "before"}, "show": "{median} ms",
       "baselines": [{"name": "babeld", "impl": "babeld"},
                     {"name": "before", "label": "before"}]}


def test_newest_run_wins_and_its_baseline_comes_from_the_same_run(tmp_path: Path) -> None:
    index = {"runs": [
        {"id": "old", "date": "2026-01-01", "command": "bench --old", "files": ["old.jsonl"]},
        {"id": "new", "date": "2026-02-01", "command": "bench --new",
         "files": {"b.jsonl": {"label": "before"}, "a.jsonl": {"label": "after"}}}],
        "figures": [FIG]}
    d = _write(tmp_path, index, {
        "old.jsonl": [{"figure": "outage_ms", "impl": "ours", "median": 9},
                      {"figure": "outage_ms", "impl": "babeld", "median": 900}],
        "b.jsonl": [{"figure": "outage_ms", "impl": "ours", "median": 20}],
        "a.jsonl": [{"figure": "outage_ms", "impl": "ours", "median": 10}]})
    table = results.generate(d)
    row = [line for line in table.splitlines() if line.startswith("| outage")]
    assert row == ["| outage | 10 ms | before: 20 ms | - | - | 2026-02-01 (new) | `bench --new` |"]


def test_a_line_s_own_command_and_date_win_and_split_keys_separate_runs(tmp_path: Path) -> None:
    index = {"runs": [{"id": "r", "date": "2026-01-01", "command": "x", "split": ["label"],
                       "files": ["r.jsonl"]}], "figures": [FIG]}
    d = _write(tmp_path, index, {"r.jsonl": [
        {"figure": "outage_ms", "impl": "babeld", "median": 900, "label": "one"},
        {"figure": "outage_ms", "impl": "ours", "median": 10, "label": "one"},
        {"figure": "outage_ms", "impl": "ours", "median": 7, "label": "two",
         "command": "bench --two", "date": "2026-01-02"}]})
    row = [line for line in results.generate(d).splitlines() if line.startswith("| outage")]
    assert row == ["| outage | 7 ms | - | - | - | 2026-01-02 (r, two) | `bench --two` |"]


def test_an_ambiguous_or_missing_figure_is_refused(tmp_path: Path) -> None:
    index = {"runs": [{"id": "r", "date": "2026-01-01", "command": "x", "files": ["r.jsonl"]}],
             "figures": [FIG]}
    d = _write(tmp_path, index, {"r.jsonl": [{"figure": "outage_ms", "impl": "ours", "median": 1},
                                             {"figure": "outage_ms", "impl": "ours", "median": 2}]})
    with pytest.raises(results.IndexError_, match="2 records"):
        results.generate(d)
    _write(tmp_path, index, {"r.jsonl": [{"figure": "other", "impl": "ours"}]})
    with pytest.raises(results.IndexError_, match="no record matches"):
        results.generate(d)


def test_meets_says_whether_the_target_is_met(tmp_path: Path) -> None:
    index = {"runs": [{"id": "r", "date": "2026-01-01", "command": "x", "files": ["r.jsonl"]}],
             "figures": [{**FIG, "target": "<= 15 ms", "meets": {"median": "<= 15"}},
                         {**FIG, "name": "admin", "match": {"figure": "admin_ms"},
                          "target": "<= 15 ms", "meets": {"median": "<= 15"}}]}
    d = _write(tmp_path, index, {"r.jsonl": [{"figure": "outage_ms", "impl": "ours", "median": 10},
                                             {"figure": "admin_ms", "median": 20}]})
    verdicts = [line.split(" | ")[4] for line in results.generate(d).splitlines()
                if line.startswith(("| outage", "| admin"))]
    assert verdicts == ["met", "**missed**"]


def test_meets_reads_a_nested_field_by_a_dotted_key(tmp_path: Path) -> None:
    index = {"runs": [{"id": "r", "date": "2026-01-01", "command": "x", "files": ["r.jsonl"]}],
             "figures": [{**FIG, "target": "<= 200 ms", "meets": {"recover_ms.p95": "<= 200"}},
                         {**FIG, "name": "admin", "match": {"figure": "admin_ms"},
                          "target": "<= 200 ms", "meets": {"recover_ms.p95": "<= 200"}}]}
    d = _write(tmp_path, index, {"r.jsonl": [
        {"figure": "outage_ms", "impl": "ours", "median": 1, "recover_ms": {"p95": 150}},
        {"figure": "admin_ms", "median": 1, "recover_ms": {"p95": 598}}]})
    verdicts = [line.split(" | ")[4] for line in results.generate(d).splitlines()
                if line.startswith(("| outage", "| admin"))]
    assert verdicts == ["met", "**missed**"]


def test_check_mode_fails_on_a_hand_edit(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "results").mkdir(parents=True)
    for p in results.RESULTS_DIR.iterdir():
        if p.is_file():
            (docs / "results" / p.name).write_bytes(p.read_bytes())
    md = docs / "results.md"
    edited = results.RESULTS_MD.read_text().replace("| outage, silent cut", "| outage, cut", 1)
    md.write_text(edited)
    assert results.main(["--check", "--results-md", str(md)]) == 1
    assert results.main(["--results-md", str(md)]) == 0
    assert results.main(["--check", "--results-md", str(md)]) == 0
