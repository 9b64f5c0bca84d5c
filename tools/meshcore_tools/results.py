"""The results table of docs/results.md, generated from the JSON lines under docs/results/.

`docs/results/index.yml` says which run each raw file holds (its id, date and command, for
files whose lines do not carry them) and which figures the table shows. For every figure the
table takes the newest run that measured it, the command that produced it and its baseline
from that same run; nothing in the raw files is edited.

    python -m meshcore_tools.results            # rewrite the generated block of docs/results.md
    python -m meshcore_tools.results --check    # exit 1 when the committed block differs

A record's own `command` and `date` win over its run's. A run is split further by the record
keys its `split` names (for example one file holding a before and an after run). Runs order
by date, then by their place in the index, then by line: the last is the newest.
"""

from __future__ import annotations

import argparse
import json
import math
import string
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "docs" / "results"
RESULTS_MD = ROOT / "docs" / "results.md"
BEGIN = "<!-- BEGIN generated results table: make results (docs/results/index.yml); do not edit -->"
END = "<!-- END generated results table -->"


class IndexError_(ValueError):
    """The index names a file, key or figure the data does not have."""


@dataclass(frozen=True)
class Record:
    data: Mapping[str, Any]
    run: tuple[str, tuple[Any, ...]]
    order: tuple[str, int, int]  # date, place of the run in the index, line
    command: str
    date: str


@dataclass
class Run:
    rid: str
    date: str
    command: str
    files: dict[str, dict[str, Any]]
    split: list[str] = field(default_factory=list)


def load_index(path: Path) -> tuple[list[Run], list[dict[str, Any]]]:
    doc = yaml.safe_load(path.read_text())
    runs = []
    for entry in doc["runs"]:
        files = entry["files"]
        if isinstance(files, list):
            files = {name: {} for name in files}
        runs.append(Run(rid=str(entry["id"]), date=str(entry["date"]),
                        command=str(entry["command"]),
                        files={name: dict(fields or {}) for name, fields in files.items()},
                        split=list(entry.get("split", []))))
    return runs, list(doc["figures"])


def load_records(runs: list[Run], results_dir: Path) -> list[Record]:
    records: list[Record] = []
    for place, run in enumerate(runs):
        line_no = 0
        for name, defaults in run.files.items():
            path = results_dir / name
            if not path.is_file():
                raise IndexError_(f"index.yml: run {run.rid}: no file {name}")
            for line in path.read_text().splitlines():
                line_no += 1
                if not line.strip():
                    continue
                raw = json.loads(line)
                if "figure" not in raw:
                    continue  # a note line
                data = {**defaults, **raw}
                key = (run.rid, tuple(_hashable(data.get(k)) for k in run.split))
                date = str(data.get("date", run.date))
                records.append(Record(data=data, run=key, order=(date, place, line_no),
                                      command=str(data.get("command", run.command)), date=date))
    return records


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _matches(data: Mapping[str, Any], match: Mapping[str, Any],
             exclude: Mapping[str, Any] | None = None) -> bool:
    for key, want in match.items():
        if data.get(key) != want:
            return False
    for key, values in (exclude or {}).items():
        if data.get(key) in (values if isinstance(values, list) else [values]):
            return False
    return True


class _Fmt(string.Formatter):
    """`{median}`, `{recover_ms[p50]}`; missing or null values read n/a, infinities never."""

    def get_value(self, key: int | str, args: Any, kwargs: Any) -> Any:
        return kwargs.get(key) if isinstance(key, str) else args[key]

    def format_field(self, value: Any, format_spec: str) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float) and math.isinf(value):
            return "never (in the window)"
        return str(super().format_field(value, format_spec))


FMT = _Fmt()


def _show(fig: Mapping[str, Any], rec: Record) -> str:
    return FMT.format(str(fig["show"]), **rec.data)


@dataclass(frozen=True)
class Row:
    figure: str
    ours: str
    baseline: str
    target: str
    verdict: str
    run: str
    command: str


OPS = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__,
       "==": float.__eq__}


def verdict(fig: Mapping[str, Any], rec: Record) -> str:
    """`meets: {p95: "<= 200"}`: "met" when every field holds, else "**missed**"; "-" without.
    A dotted key reads a nested field (`recover_ms.p95`)."""
    meets = fig.get("meets")
    if not meets:
        return "-"
    for key, cond in meets.items():
        op, _, bound = str(cond).partition(" ")
        if op not in OPS:
            raise IndexError_(f"index.yml: figure {fig['name']!r}: bad condition {cond!r}")
        value: Any = rec.data
        for part in str(key).split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if not isinstance(value, (int, float)) or not OPS[op](float(value), float(bound)):
            return "**missed**"
    return "met"


def build_rows(figures: list[dict[str, Any]], records: list[Record]) -> list[Row]:
    rows = []
    for fig in figures:
        match = dict(fig["match"])
        subject = [r for r in records if _matches(r.data, match, fig.get("exclude"))]
        if not subject:
            raise IndexError_(f"index.yml: figure {fig['name']!r}: no record matches {match}")
        newest = max(r.order for r in subject)
        chosen = [r for r in subject if r.order[:2] == newest[:2]]
        run_key = max(chosen, key=lambda r: r.order).run
        chosen = [r for r in chosen if r.run == run_key]
        if len(chosen) > 1:
            raise IndexError_(f"index.yml: figure {fig['name']!r}: {len(chosen)} records in run "
                              f"{run_key} match; narrow `match` or split the run")
        rec = chosen[0]
        baselines = []
        for cand in fig.get("baselines", []):
            want = {**match, **{k: v for k, v in cand.items() if k != "name"}}
            same_run = [r for r in records if r.run == rec.run and r is not rec
                        and _matches(r.data, want)]
            if same_run:
                base = max(same_run, key=lambda r: r.order)
                baselines.append(f"{cand['name']}: {_show(fig, base)}")
        run_id = rec.run[0] + "".join(f", {v}" for v in rec.run[1]
                                      if v is not None and v != rec.command)
        rows.append(Row(figure=str(fig["name"]), ours=_show(fig, rec),
                        baseline="; ".join(baselines) or "-", target=str(fig.get("target", "-")),
                        verdict=verdict(fig, rec), run=f"{rec.date} ({run_id})",
                        command=f"`{rec.command}`"))
    return rows


def render(rows: list[Row]) -> str:
    out = [BEGIN, "",
           "| figure | mesh-core | baseline (same run) | target | met? | newest run | command |",
           "|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [row.figure, row.ours, row.baseline, row.target, row.verdict, row.run,
                 row.command]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    out += ["", END]
    return "\n".join(out)


def generate(results_dir: Path = RESULTS_DIR) -> str:
    runs, figures = load_index(results_dir / "index.yml")
    return render(build_rows(figures, load_records(runs, results_dir)))


def splice(document: str, block: str) -> str:
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        raise ValueError("docs/results.md has no generated-table markers")
    return document[:start] + block + document[end + len(END):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if docs/results.md differs from what the data gives")
    parser.add_argument("--results-md", type=Path, default=RESULTS_MD)
    args = parser.parse_args(argv)
    current = args.results_md.read_text()
    wanted = splice(current, generate(args.results_md.parent / "results"))
    if args.check:
        if wanted != current:
            print(f"{args.results_md} is out of date with docs/results/: run `make results`",
                  file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        args.results_md.write_text(wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
