"""``labctl report``: the series an operator looks at first, from the lab's Prometheus.

Prints a snapshot, writes a plot (reachability and failovers over time) and a
JSON copy. ``--prometheus URL`` points it at any Prometheus that scrapes mesh
agents (the netns monitoring test uses that).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from meshcore_tools.lab import prometheus
from meshcore_tools.lab.state import load_state

AGENT = 'job="mesh_agent"'
# A 50-node lab on 2 cores keeps the monitor's Prometheus slow to answer.
REPORT_TIMEOUT_S = 60
# (label, PromQL, how to print the value): the series an operator looks at first.
SNAPSHOT = [
    ("agents answering", "meshcore:agents_up:count", "count"),
    ("agent targets up", "meshcore:agent_up:ratio", "percent"),
    ("node_exporter targets up", "meshcore:node_up:ratio", "percent"),
    ("pairs routed", "meshcore:reachability:ratio", "percent"),
    ("pairs with k disjoint paths", "meshcore:destinations_with_k_disjoint:ratio", "percent"),
    ("pairs with a backup path", "meshcore:destinations_with_backup:ratio", "percent"),
    ("failovers since agent start", f"sum(meshcore_failovers_total{{{AGENT}}})", "count"),
    ("failovers, last 5 min", "meshcore:failovers:increase5m", "count"),
    ("failover p95, last hour",
     'meshcore:failover_duration_seconds:quantile_rate1h{quantile="0.95"}', "ms"),
    ("topology changes per second, 5 min", "meshcore:topology_changes:rate5m", "rate"),
    ("hello RTT, mean", f"avg(meshcore_link_rtt_seconds{{{AGENT}}})", "ms"),
    ("certificate lifetime left, shortest",
     f"min(meshcore_identity_cert_expiry_timestamp_seconds{{{AGENT}}}) - time()", "days"),
]
PLOTTED = {
    "pairs routed": "meshcore:reachability:ratio",
    "agent targets up": "meshcore:agent_up:ratio",
    "failovers since agent start": f"sum(meshcore_failovers_total{{{AGENT}}})",
}


def show(value: float | None, kind: str) -> str:
    if value is None:
        return "no data"
    if value != value:  # NaN: a quantile of no events
        return "NaN (no events in the window)"
    return {
        "count": f"{value:.0f}", "percent": f"{value * 100:.1f}%", "ms": f"{value * 1000:.2f} ms",
        "rate": f"{value:.3f}", "days": f"{value / 86400:.1f} d",
    }[kind]


def cmd_report(args: argparse.Namespace) -> None:
    base = args.prometheus or prometheus.url_of(load_state())
    end = time.time()
    start = end - args.minutes * 60
    step = max(5.0, args.minutes * 60 / 360)
    try:
        snapshot: list[dict[str, Any]] = [
            {"name": name, "query": q, "value": prometheus.instant(base, q, REPORT_TIMEOUT_S),
             "kind": kind}
            for name, q, kind in SNAPSHOT
        ]
        firing = prometheus.api(base, "query", timeout=REPORT_TIMEOUT_S,
                                query='ALERTS{alertstate="firing"}')["result"]
        series = {
            name: [[float(t), float(v)] for t, v in r[0]["values"]] if r else []
            for name, q in PLOTTED.items()
            for r in [prometheus.api(base, "query_range", timeout=REPORT_TIMEOUT_S, query=q,
                                     start=str(start), end=str(end), step=str(step))["result"]]
        }
    except OSError as exc:
        raise SystemExit(f"labctl: Prometheus at {base} does not answer: {exc}") from exc
    alerts = sorted(f"{a['metric']['alertname']}{{node={a['metric'].get('node', '-')}}}"
                    for a in firing)
    w = max(len(row["name"]) for row in snapshot)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(end))
    print(f"\nmesh snapshot from {base} ({stamp})")
    for row in snapshot:
        print(f"  {row['name']:<{w}}  {show(row['value'], row['kind'])}")
    print(f"  {'alerts firing':<{w}}  {len(alerts)}" + (f": {', '.join(alerts)}" if alerts else ""))
    png = Path(args.png)
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(series, png, args.minutes)
    out = Path(args.json)
    # JSON has no NaN: a quantile of no events is written as null.
    rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()
             if k != "kind"} for row in snapshot]
    out = Path(args.json)
    out.write_text(json.dumps({
        "prometheus": base, "time": end, "window_minutes": args.minutes, "step_seconds": step,
        "snapshot": rows, "alerts_firing": alerts, "series": series,
    }, indent=2))
    print(f"plot: {png}\nreport: {out}")


def plot(series: dict[str, list[list[float]]], png: Path, minutes: float) -> None:
    """Reachability (and agents up) over the failover count, on one time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    now = time.time()
    for name, style in (("pairs routed", "-"), ("agent targets up", "--")):
        pts = series[name]
        top.plot([(t - now) / 60 for t, _ in pts], [v for _, v in pts], style, label=name,
                 linewidth=2)
    top.set_ylim(-0.02, 1.05)
    top.set_ylabel("ratio")
    top.legend(loc="lower left")
    top.grid(alpha=0.3)
    top.set_title(f"mesh-core lab: reachability and failovers, last {minutes:g} min")
    pts = series["failovers since agent start"]
    bottom.step([(t - now) / 60 for t, _ in pts], [v for _, v in pts], where="post",
                color="tab:red", label="failovers (sum over agents)")
    bottom.set_ylabel("failovers")
    bottom.set_xlabel("minutes before now")
    bottom.legend(loc="upper left")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
