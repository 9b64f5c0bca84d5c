"""Plain aligned tables and the human forms of times, for meshctl's default output."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks.

    >>> print(table(["A", "BB"], [["x", 1]]))
    A  BB
    x  1
    """
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def duration(seconds: float) -> str:
    """A short human duration: 0.4ms, 850ms, 42s, 5m12s, 3h04m, 6d02h."""
    s = abs(seconds)
    if s < 0.01:  # RTTs and failovers: keep a decimal
        text = f"{s * 1000:.1f}ms"
    elif s < 1:
        text = f"{s * 1000:.0f}ms"
    elif s < 60:
        text = f"{s:.0f}s"
    elif s < 3600:
        text = f"{int(s // 60)}m{int(s % 60):02d}s"
    elif s < 86400:
        text = f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    else:
        text = f"{int(s // 86400)}d{int(s % 86400 // 3600):02d}h"
    return f"-{text}" if seconds < 0 else text


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``15m``, ``1h``, ``2d`` in seconds; ValueError otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    value, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "s")
    number = float(value)
    if number < 0:
        raise ValueError(f"{text}: a duration cannot be negative")
    return number * units[unit]


def timestamp(wall: float) -> str:
    """UTC, to the second: 2026-12-04 01:02:03."""
    return dt.datetime.fromtimestamp(wall, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def yes_no(flag: Any) -> str:
    return "yes" if flag else "no"


def compact(detail: dict[str, Any], width: int = 60) -> str:
    """An event's detail as k=v pairs on one line, cut at *width*."""
    text = " ".join(f"{k}={v}" for k, v in detail.items())
    return text if len(text) <= width else text[: width - 3] + "..."
