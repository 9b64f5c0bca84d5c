"""Plain counting for the sans-I/O cores: no Prometheus objects inside a core.

A core keeps integers, :class:`collections.Counter` by reason, and
:class:`Histogram` for durations; :mod:`mesh_agent.metrics` reads them all at
scrape time, in one collector, so nothing is counted twice.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


class Histogram:
    """Cumulative-bucket counts of observations, as a Prometheus histogram reports them."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it) per bucket, ending with +Inf."""
        out, total = [], 0
        for bound, n in zip([*map(repr, self.buckets), "+Inf"], self._counts, strict=True):
            total += n
            out.append((bound, total))
        return out
