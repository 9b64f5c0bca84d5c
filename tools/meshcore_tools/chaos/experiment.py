"""Experiments: the YAML an operator writes, checked against its schema, and its seeded schedule.

An experiment (``experiments/*.yml``, schema ``schemas/experiment.schema.json``)
declares a steady-state hypothesis, a blast radius, faults (class, target,
duration, repetitions) and probes. :func:`load` validates it and fills the
defaults; :func:`schedule` turns it into the list of injections a run makes,
from the seed alone: the same experiment and seed give the same schedule on
any topology with the same node names. Targets that depend on where traffic
flows (``random`` for a link or node class) are kept as a seeded *position on
the probe's path* and resolved when the step runs, from the kernel's routes,
as Battlemesh picks "a node on the path".
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import networkx as nx
import yaml

from meshcore_tools.chaos import faults
from meshcore_tools.chaos.faults import Topo


class ExperimentError(ValueError):
    """An experiment that does not validate, or asks for more than its blast radius allows."""


def schema(name: str) -> dict[str, Any]:
    text = resources.files("meshcore_tools.chaos").joinpath(f"schemas/{name}.schema.json")
    return dict(json.loads(text.read_text()))


def _defaults(sch: dict[str, Any], data: Any) -> Any:
    """Fill the schema's defaults into ``data`` (objects and arrays of objects)."""
    if isinstance(data, dict) and sch.get("type") == "object":
        for key, sub in sch.get("properties", {}).items():
            if key not in data and "default" in sub:
                data[key] = json.loads(json.dumps(sub["default"]))
            if key in data:
                data[key] = _defaults(sub, data[key])
    elif isinstance(data, list) and isinstance(sch.get("items"), dict):
        return [_defaults(sch["items"], x) for x in data]
    return data


def validate(data: Any, source: str = "experiment") -> dict[str, Any]:
    sch = schema("experiment")
    try:
        jsonschema.validate(data, sch)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
        raise ExperimentError(f"{source}: {where}: {exc.message}") from None
    data = _defaults(sch, data)
    data.setdefault("steady_state", _defaults(sch["properties"]["steady_state"], {}))
    data.setdefault("blast_radius", _defaults(sch["properties"]["blast_radius"], {}))
    radius = data["blast_radius"]
    for i, f in enumerate(data["faults"]):
        if f["duration_s"] > radius["max_duration_s"]:
            raise ExperimentError(f"{source}: faults/{i}: duration_s {f['duration_s']} is over "
                                  f"blast_radius.max_duration_s {radius['max_duration_s']}")
    return dict(data)


def load(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ExperimentError(f"{path}: {exc}") from None
    return validate(data, str(path))


@dataclass(frozen=True)
class Step:
    """One injection. ``target`` is explicit, or ``("@path", fraction)`` resolved at run time."""

    index: int
    cls: str
    target: tuple[str, ...]
    duration_s: float
    settle_s: float
    params: dict[str, Any] = field(default_factory=dict)
    path_position: float | None = None  # for a target on the probe's path


def schedule(exp: dict[str, Any], topo: Topo) -> list[Step]:
    """Every injection of the experiment, in order, from its seed."""
    rng = random.Random(exp.get("seed", 1))
    exclude = set(exp["blast_radius"].get("exclude", []))
    steps: list[Step] = []
    for f in exp["faults"]:
        cls = f["class"]
        for _ in range(f["repetitions"]):
            pos = None
            target: tuple[str, ...] = ()
            if f["target"] != "random":
                target = tuple(f["target"])
            elif faults.CLASSES[cls].target == "partition":
                target = faults.bisect(topo, rng.randrange(1 << 30), sorted(exclude))
            else:
                pos = rng.random()
                if cls in ("rogue", "cpu_starvation", "runaway_unit"):
                    # Not about a path: any node outside the exclusions.
                    target = faults.pick_target(cls, topo, rng, sorted(exclude))
                    pos = None
            steps.append(Step(len(steps), cls, target, float(f["duration_s"]),
                              float(f["settle_s"]), dict(f.get("params") or {}), pos))
    return steps


def on_path(step: Step, path: list[str], exclude: set[str],
            graph: nx.Graph | None = None) -> tuple[str, ...] | None:
    """Resolve a path-position target: a link of ``path``, or a transit node of it.

    With ``graph``, only a link or node whose loss leaves the path's two ends connected
    (a protected element: there is another way round to reroute to); on a tree-like mesh
    most links are bridges, and cutting one measures the fault's duration, not recovery.
    """
    assert step.path_position is not None
    kind = faults.CLASSES[step.cls].target
    src, dst = path[0], path[-1]

    def survives(removed: tuple[str, ...]) -> bool:
        if graph is None:
            return True
        g = graph.copy()
        if len(removed) == 2:
            g.remove_edge(*removed)
        else:
            g.remove_node(removed[0])
        return bool(nx.has_path(g, src, dst))

    cands: list[tuple[str, ...]]
    if kind == "link":
        cands = [e for e in itertools.pairwise(path) if survives(e)]
    else:
        cands = [(n,) for n in path[1:-1] if n not in exclude and survives((n,))]
    if not cands:
        return None
    return cands[min(len(cands) - 1, int(step.path_position * len(cands)))]


def nodes_touched(plan: dict[str, list[dict[str, Any]]]) -> int:
    return len(plan)
