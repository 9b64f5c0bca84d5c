"""The report: a Markdown table per fault class and PNG plots, from one or more journals.

Per class: how many injections, and p50 / p95 / max of detect time (agents'
event logs), recover time (probes, first loss to first success) and global
reconvergence (after injection; and after removal: a crashed node's rejoin,
a partition's heal). Plots (matplotlib, Agg): the outage distribution per class,
and the timeline of one experiment (probe round-trip times with the fault
windows shaded and the lost probes marked).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from meshcore_tools.chaos import probes
from meshcore_tools.chaos.probes import quantile


def recompute(journal: dict[str, Any]) -> dict[str, Any]:
    """The steps' recover times again, from the probe trace the journal keeps, with this
    version's definitions (a journal written by an older runner gets today's figures)."""
    m = journal.get("measurements", {})
    for pair, points in m.get("probe_traces", {}).items():
        trace = probes.Trace([(t, 0, r) for t, r in points], 0, 0, 0.0, 0.0)
        for s in m.get("steps", []):
            if s.get("skipped") or "removed_at" not in s:
                continue
            if s["class"] == "partition":
                v = probes.heal_s(trace, s["removed_at"])
            else:
                v = probes.recover_s(trace, s["injected_at"], s["removed_at"])
            s.setdefault("recover_s", {})[pair] = None if math.isinf(v) else round(v, 4)
    return journal


def _stats(values: Sequence[float | None]) -> str:
    got = [v for v in values if v is not None and not math.isinf(v)]
    missing = len(values) - len(got)
    if not got:
        return f"- ({missing} none)" if missing else "-"
    ms = [1000 * v for v in got]
    text = f"{quantile(ms, 0.5):.0f} / {quantile(ms, 0.95):.0f} / {max(ms):.0f}"
    return text + (f" ({missing} none)" if missing else "")


def by_class(journals: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for j in journals:
        for step in j.get("measurements", {}).get("steps", []):
            if not step.get("skipped"):
                out[step["class"]].append(step)
    return dict(out)


def table(journals: Sequence[dict[str, Any]]) -> str:
    rows = ["| class | n | detect ms p50/p95/max | recover ms p50/p95/max | "
            "reconverge ms p50/p95/max | after removal ms p50/p95/max | loops seen |",
            "|---|---|---|---|---|---|---|"]
    for cls, steps in sorted(by_class(journals).items()):
        recover = [v for s in steps for v in (s.get("recover_s") or {}).values()]
        rows.append(
            f"| {cls} | {len(steps)} | {_stats([s.get('detect_s') for s in steps])} | "
            f"{_stats(recover)} | {_stats([s.get('reconverge_s') for s in steps])} | "
            f"{_stats([s.get('reconverge_after_remove_s') for s in steps])} | "
            f"{max((s.get('loops_seen', 0) for s in steps), default=0)} |")
    levels = []
    for j in journals:
        for pair, lv in j.get("measurements", {}).get("service_levels", {}).items():
            levels.append(f"| {j['experiment'].get('title', '?')} | {pair} | "
                          f"{lv['latency_p95_ms']:.1f} | {lv['loss_pct']:.2f} | "
                          f"{lv['availability_pct']:.1f} |")
    out = "\n".join(rows)
    if levels:
        out += ("\n\nStage 1 service levels over each run (targets: latency p95 < 100 ms, "
                "loss < 2 %, availability >= 95 %):\n\n| experiment | probe | latency p95 ms | "
                "loss % | availability % |\n|---|---|---|---|---|\n" + "\n".join(levels))
    return out


def plots(journals: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """outage.png (per class) and timeline.png (the first journal with a probe trace)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the report still has its tables
        return []
    written = []
    classes = by_class(journals)
    if classes:
        fig, ax = plt.subplots(figsize=(8, 4))
        names = sorted(classes)
        data = [[1000 * v for s in classes[c] for v in (s.get("recover_s") or {}).values()
                 if v is not None] or [0.0] for c in names]
        ax.boxplot(data, whis=(5, 95))
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
        ax.set_ylabel("recover time, ms (first loss to first success)")
        ax.set_title("outage per fault class")
        fig.tight_layout()
        written.append(out / "outage.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    for j in journals:
        traces = j.get("measurements", {}).get("probe_traces", {})
        if not traces:
            continue
        pair, points = next(iter(traces.items()))
        t0 = points[0][0] if points else 0.0
        fig, ax = plt.subplots(figsize=(10, 3.5))
        ax.plot([p[0] - t0 for p in points], [p[1] for p in points], ".", ms=2)
        for s in j["measurements"].get("steps", []):
            if "injected_at" in s and "removed_at" in s:
                ax.axvspan(s["injected_at"] - t0, s["removed_at"] - t0, alpha=0.2, color="red")
                ax.text(s["injected_at"] - t0, ax.get_ylim()[1] * 0.9, s["class"], fontsize=7)
        ax.set_xlabel("seconds")
        ax.set_ylabel(f"RTT ms {pair}")
        ax.set_title(f"timeline: {j['experiment'].get('title', '')} (red: fault held)")
        fig.tight_layout()
        written.append(out / "timeline.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
        break
    return written
