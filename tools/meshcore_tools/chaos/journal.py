"""The run's journal, chaostoolkit-compatible at the top level (``schemas/journal.schema.json``).

chaostoolkit's tooling reads ``status``, ``deviated``, ``steady_states``
(``before``/``after``/``during``), ``run[]`` and ``rollbacks[]``, each record
an ``activity`` with ``status``, ``start``, ``end``, ``duration`` and
``output``; mesh-core's figures go under ``measurements``. :class:`JournalBuilder`
collects records as the runner goes; :func:`check` validates a journal.
"""

from __future__ import annotations

import datetime as dt
import platform
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jsonschema

from meshcore_tools.chaos.experiment import schema

VERSION = "meshcore-chaos-1"


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


class Activity:
    """One record being written: the body sets ``output``, ``status`` and ``tolerance_met``."""

    def __init__(self, kind: str, name: str, **extra: Any) -> None:
        self.activity = {"type": kind, "name": name, **extra}
        self.output: Any = None
        self.status = "succeeded"
        self.exception: list[str] = []
        self.tolerance_met: bool | None = None


class JournalBuilder:
    def __init__(self, experiment: dict[str, Any]) -> None:
        self.t0 = time.time()
        self.doc: dict[str, Any] = {
            "chaoslib-version": VERSION,
            "platform": platform.platform(),
            "node": socket.gethostname(),
            "experiment": experiment,
            "start": iso(self.t0),
            "status": "completed",
            "deviated": False,
            "steady_states": {"before": None, "after": None, "during": []},
            "run": [],
            "rollbacks": [],
            "measurements": {},
        }

    @contextmanager
    def record(self, into: list[dict[str, Any]], kind: str, name: str,
               **extra: Any) -> Iterator[Activity]:
        act = Activity(kind, name, **extra)
        start = time.time()
        try:
            yield act
        except Exception as exc:
            act.status = "failed"
            act.exception = [f"{type(exc).__name__}: {exc}"]
            raise
        finally:
            end = time.time()
            rec: dict[str, Any] = {"activity": act.activity, "status": act.status,
                                   "output": act.output, "start": iso(start), "end": iso(end),
                                   "duration": round(end - start, 6)}
            if act.exception:
                rec["exception"] = act.exception
            if act.tolerance_met is not None:
                rec["tolerance_met"] = act.tolerance_met
            into.append(rec)

    def steady(self, when: str, probes: list[dict[str, Any]]) -> bool:
        met = all(p.get("tolerance_met", False) for p in probes)
        self.doc["steady_states"][when] = {"steady_state_met": met, "probes": probes}
        return met

    def finish(self, status: str, deviated: bool) -> dict[str, Any]:
        end = time.time()
        self.doc.update(status=status, deviated=deviated, end=iso(end),
                        duration=round(end - self.t0, 3))
        return self.doc


def check(doc: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError if ``doc`` is not a valid journal."""
    jsonschema.validate(doc, schema("journal"))
