"""What the benchmarks (tests/bench/) share: a work directory that goes with its lab, the
options and preflight every routing comparison has, and the per-call timing of the
in-process ones (:func:`per_call_us`).

``BENCH_KEEP=1`` in the environment keeps the work directory (agent logs, journals) after
the lab is down, for a look at a failed run. SIGINT and SIGTERM stop a bench through the
same way out (:func:`meshcore_tools.interrupts.interrupts`): a bench killed from a script
leaves no agents, daemons or namespaces behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from meshcore_tools.interrupts import interrupts


class _Lab(Protocol):
    def down(self) -> None: ...


L = TypeVar("L", bound=_Lab)


@contextmanager
def bench_workdir(prefix: str, make_lab: Callable[[Path], L]) -> Iterator[tuple[Path, L]]:
    """A fresh work directory and the lab built in it: on the way out, whatever happened,
    the lab is taken down first, then the directory removed (unless ``BENCH_KEEP`` is set)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    with interrupts(prefix.strip("-")) as intr:
        try:
            lab = make_lab(workdir)
            try:
                yield workdir, lab
            finally:
                if intr is not None:
                    intr.armed = False  # a second signal is counted, never cuts the teardown
                lab.down()
        finally:
            if os.environ.get("BENCH_KEEP") is None:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                print(f"BENCH_KEEP: kept {workdir}", file=sys.stderr, flush=True)


def bench_parser(doc: str | None, *, topologies: str, impls: str,
                 trials: int = 5) -> argparse.ArgumentParser:
    """The options every routing comparison has; the bench adds its own."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topologies", default=topologies,
                   help="comma-separated kind:n (lab topology specs)")
    p.add_argument("--impls", default=impls, help="comma-separated routing implementations")
    p.add_argument("--trials", type=int, default=trials)
    return p


def bench_preflight(bench: str, emit: Callable[..., Any]) -> bool:
    """Root for network namespaces (else a ``skipped`` line and False) and babeld (else exit)."""
    if os.geteuid() != 0:
        emit(figure="skipped", reason="needs root for network namespaces")
        return False
    if shutil.which("babeld") is None:
        raise SystemExit(f"{bench}: babeld is not installed (make setup installs it)")
    return True


def per_call_us(fn: Callable[[], object], seconds: float = 1.0) -> float:
    """Microseconds per call of *fn*, called for about *seconds* (in batches of 50, so the
    clock is read once per batch)."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(50):
            fn()
        n += 50
    return (time.perf_counter() - t0) / n * 1e6
