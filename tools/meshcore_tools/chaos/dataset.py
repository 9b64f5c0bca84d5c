"""The labelled telemetry dataset: write one run's directory, read it back, check it.

Format (version 1, ``schemas/dataset.schema.json``, docs/dataset.md)::

    <run_id>/meta.json        format, version, seed, topology name, times, schedule, balance
    <run_id>/topology.json    the normalised topology
    <run_id>/samples.jsonl    node and link records at 1 s (and one recorder record per node)
    <run_id>/events.jsonl     the agents' event logs (link up/down, failover, advert rejected)
    <run_id>/labels.jsonl     one record per fault (class, nodes, links, start, end) and
                              one per quiet period (class "none")

Labels come from the chaos journal: the time a fault was applied on its
nodes to the time it was removed. The gaps between faults (and before the
first, after the last) are labelled quiet.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from meshcore_tools.chaos import faults
from meshcore_tools.chaos.experiment import schema
from meshcore_tools.chaos.faults import Fault, Topo

FILES = ("meta.json", "topology.json", "samples.jsonl", "events.jsonl", "labels.jsonl")


@dataclass
class Dataset:
    meta: dict[str, Any]
    topology: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)


def labels_from_steps(steps: Iterable[Mapping[str, Any]], topo: Topo, start: float,
                      end: float) -> list[dict[str, Any]]:
    """Fault labels from a journal's steps, and quiet labels for the time between."""
    out: list[dict[str, Any]] = []
    for s in steps:
        if s.get("skipped") or "injected_at" not in s:
            continue
        fault = Fault(s["class"], tuple(s["target"]), s.get("fault_id", ""), s.get("params", {}))
        nodes = sorted(faults.plan(fault, topo))
        links: list[list[str]] = []
        if faults.CLASSES[fault.cls].target == "link":
            links = [sorted(fault.target)]
        elif fault.cls == "partition":
            side = set(fault.target)
            links = sorted(sorted(e) for e in topo.graph.edges if (e[0] in side) != (e[1] in side))
        out.append({"class": fault.cls, "fault_id": fault.id, "target": list(fault.target),
                    "start": s["injected_at"], "end": s["removed_at"], "nodes": nodes,
                    "links": links, "params": dict(fault.params)})
    out.sort(key=lambda x: x["start"])
    quiet, t = [], start
    for lab in out:
        if lab["start"] > t:
            quiet.append(_quiet(t, lab["start"]))
        t = max(t, lab["end"])
    if end > t:
        quiet.append(_quiet(t, end))
    return sorted(out + quiet, key=lambda x: x["start"])


def _quiet(start: float, end: float) -> dict[str, Any]:
    return {"class": "none", "fault_id": None, "target": [], "start": start, "end": end,
            "nodes": [], "links": []}


def label_at(labels: Iterable[Mapping[str, Any]], t: float, node: str) -> str:
    """The class a sample of ``node`` at ``t`` carries: a fault on that node, else "none"."""
    for lab in labels:
        if lab["class"] != "none" and lab["start"] <= t < lab["end"] and node in lab["nodes"]:
            return str(lab["class"])
    return "none"


def balance(ds: Dataset) -> dict[str, Any]:
    """Seconds per class and node samples per class (a node sample is faulty when a fault
    was applied on that node at that time)."""
    secs: Counter[str] = Counter()
    for lab in ds.labels:
        secs[lab["class"]] += lab["end"] - lab["start"]
    per: Counter[str] = Counter(label_at(ds.labels, s["t"], s["node"]) for s in ds.samples
                                if s.get("kind") == "node")
    return {"seconds": {k: round(v, 1) for k, v in sorted(secs.items())},
            "node_samples": dict(sorted(per.items()))}


def _jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n")


def write(ds: Dataset, directory: Path) -> Path:
    check(ds)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta.json").write_text(json.dumps(ds.meta, indent=1, sort_keys=True))
    (directory / "topology.json").write_text(json.dumps(ds.topology, indent=1, sort_keys=True))
    _jsonl(directory / "samples.jsonl", sorted(ds.samples, key=lambda r: (r.get("t", 0),
                                                                          r["node"], r["kind"],
                                                                          r.get("peer", ""))))
    _jsonl(directory / "events.jsonl", sorted(ds.events, key=lambda r: (r["t"], r["node"])))
    _jsonl(directory / "labels.jsonl", ds.labels)
    return directory


def read(directory: Path) -> Dataset:
    def lines(name: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in (directory / name).read_text().splitlines() if x]

    ds = Dataset(json.loads((directory / "meta.json").read_text()),
                 json.loads((directory / "topology.json").read_text()),
                 lines("samples.jsonl"), lines("events.jsonl"), lines("labels.jsonl"))
    check(ds)
    return ds


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    sch = {"$defs": schema("dataset")["$defs"], "$ref": f"#/$defs/{name}"}
    cls = jsonschema.validators.validator_for(schema("dataset"))
    cls.check_schema(sch)
    return cls(sch)


def check(ds: Dataset) -> None:
    """Raise jsonschema.ValidationError on the first record that does not fit the format."""
    def v(rec: Any, name: str) -> None:
        _validator(name).validate(rec)

    v(ds.meta, "meta")
    v(ds.topology, "topology")
    for s in ds.samples:
        v(s, str(s.get("kind")) if s.get("kind") in ("node", "link", "recorder") else "node")
    for e in ds.events:
        v(e, "event")
    for lab in ds.labels:
        v(lab, "label")
