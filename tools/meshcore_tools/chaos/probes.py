"""Probe traffic and what it measures: 10 ms pings at real-time priority, Battlemesh-style.

The instrument is iputils ``ping -D -O -i 0.01`` under ``chrt -f 20``: at
normal priority a routing daemon per node on two cores can starve it, and a
gap of 50-80 ms then shows with no packet lost (bench_failover's finding).
``ping -i 0.01`` really sends about every 16 ms here (MACHINE-NOTES), so every
figure comes from the timestamps, never from counts times the interval.

- :func:`outages` — Battlemesh's method: from the first loss to the first
  success. For each fault window the gap between the last reply before it
  broke and the first reply after, minus one sending interval (``recover_s``).
- :func:`service_levels` — the seeds' Stage 1 levels over a whole run: latency
  p95 (< 100 ms), loss (< 2 %), availability (>= 95 %, the share of 1 s bins
  in which at least one reply came back).

Parsing is plain functions over the text ``ping`` printed; :class:`Probe` only
starts and stops the process.
"""

from __future__ import annotations

import itertools
import math
import re
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

INTERVAL_S = 0.01
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+).* time=([\d.]+) ms")
NO_ANSWER = re.compile(r"^\[(\d+\.\d+)\] no answer yet for icmp_seq=(\d+)")
SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


@dataclass(frozen=True)
class Trace:
    """What one probe saw: reply (wall time, seq, rtt ms), and totals."""

    replies: list[tuple[float, int, float]]
    sent: int
    received: int
    started: float  # wall time of the first line (reply or no-answer)
    ended: float


def parse(text: str) -> Trace:
    replies, stamps = [], []
    for line in text.splitlines():
        if m := REPLY.match(line):
            replies.append((float(m.group(1)), int(m.group(2)), float(m.group(3))))
            stamps.append(float(m.group(1)))
        elif m := NO_ANSWER.match(line):
            stamps.append(float(m.group(1)))
    s = SUMMARY.search(text)
    sent, received = (int(s.group(1)), int(s.group(2))) if s else (len(stamps), len(replies))
    return Trace(replies, sent, received, min(stamps, default=0.0), max(stamps, default=0.0))


def recover_s(trace: Trace, start: float, end: float, interval: float = INTERVAL_S) -> float:
    """Outage caused by a fault in [start, end]: the longest reply gap that begins at or after
    ``start`` - a little, and before ``end``; minus one interval. ``inf`` if no reply came
    back after ``start`` at all, 0 if nothing was lost."""
    times = [t for t, _, _ in trace.replies]
    if not times or times[-1] < start:
        return math.inf
    gaps = [b - a for a, b in itertools.pairwise(times) if b >= start - 0.05 and a <= end]
    return max(0.0, max(gaps, default=0.0) - interval) if gaps else 0.0


def heal_s(trace: Trace, removed: float, interval: float = INTERVAL_S) -> float:
    """A partition's heal: from its removal to the first reply after it, when the flow was
    cut (no reply in the 100 ms before the removal); 0 when the flow was never cut (both
    ends on one side); ``inf`` if no reply came back at all."""
    times = [t for t, _, _ in trace.replies]
    after = [t for t in times if t >= removed]
    if not after:
        return math.inf
    if any(removed - 0.1 <= t < removed for t in times):
        return 0.0
    return max(0.0, after[0] - removed - interval)


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (the bench's convention): q=0.95 of 30 values is the 29th."""
    srt = sorted(values)
    if not srt:
        return math.nan
    return srt[min(len(srt) - 1, round(q * (len(srt) - 1)))]


@dataclass(frozen=True)
class Levels:
    latency_p95_ms: float
    loss_pct: float
    availability_pct: float

    def ok(self) -> bool:
        return (self.latency_p95_ms < 100 and self.loss_pct < 2
                and self.availability_pct >= 95)


def service_levels(trace: Trace) -> Levels:
    rtts = [r for _, _, r in trace.replies]
    loss = 100.0 * (trace.sent - trace.received) / trace.sent if trace.sent else 100.0
    if trace.ended <= trace.started:
        return Levels(quantile(rtts, 0.95), loss, 0.0)
    bins = max(1, math.ceil(trace.ended - trace.started))
    up = {int(t - trace.started) for t, _, _ in trace.replies}
    return Levels(quantile(rtts, 0.95), loss, 100.0 * len(up) / bins)


class Probe:
    """``ping`` at 10 ms and RT priority from ``prefix`` (a namespace or node), to ``dst``."""

    def __init__(self, prefix: Sequence[str], src: str, dst: str,
                 interval: float = INTERVAL_S, rt: bool = True) -> None:
        argv = [*prefix, *(["chrt", "-f", "20"] if rt else []), "ping", "-D", "-O", "-n",
                "-i", str(interval), "-W", "1", "-I", src, dst]
        # A file, not a pipe: nobody reads until the end, and a full 64 KiB pipe
        # (some 800 lines, 13 s of pings) would block ping, which then stops sending.
        self.out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT)

    def stop(self) -> Trace:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.seek(0)
        text = self.out.read()
        self.out.close()
        return parse(text)
