"""The mesh-core Grafana dashboard, as code (grafana-foundation-sdk).

    python -m meshcore_tools.grafana.dashboard          write the dashboard JSON
    python -m meshcore_tools.grafana.dashboard --check  exit 1 if the committed JSON is stale

The JSON is roles/grafana/files/dashboards/mesh-core.json.

(``make dashboard`` runs the first.)

Every panel's query must return data from the lab's Prometheus
(tests/test_dashboard_lab.py). A panel whose metric belongs to a later issue
says so: its description starts with ``Waiting for issue: <name>.`` and the
panel test expects it to return nothing until that issue lands.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders.common import ReduceDataOptions, VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
)
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from meshcore_tools import ROOT

OUTPUT = ROOT / "roles" / "grafana" / "files" / "dashboards" / "mesh-core.json"
# The grafana role provisions the Prometheus datasource under this uid.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="meshcore-prometheus")
WAITING_PREFIX = "Waiting for issue: "
AGENT = 'job="mesh_agent"'


@dataclass(frozen=True)
class PanelSpec:
    title: str
    description: str
    # (PromQL, legend)
    queries: list[tuple[str, str]]
    unit: str = "short"
    kind: str = "timeseries"
    # The issue whose metric this panel waits for; None when it shows lab data now.
    waiting_for: str | None = None
    bounds: tuple[float, float] | None = None
    extra: dict[str, str] = field(default_factory=dict)


PANELS: list[PanelSpec] = [
    PanelSpec(
        "Availability",
        "Share of mesh agents and node_exporters answering their scrape, and of (source, "
        "destination) pairs with a route (recording rules meshcore:*:ratio).",
        [
            ("meshcore:agent_up:ratio", "agents up"),
            ("meshcore:node_up:ratio", "node_exporters up"),
            ("meshcore:reachability:ratio", "pairs routed"),
        ],
        unit="percentunit",
        kind="stat",
        bounds=(0, 1),
    ),
    PanelSpec(
        "MTTR p50/p95/p99",
        "Time to repair of the self-healing loop's incidents, from detection to recovery "
        "(meshcore_mttr_seconds, every class, recording rule over 1 h; docs/mapek.md). Empty "
        "(NaN) while no incident recovered in the hour, and on a fleet with mapek off. Local "
        "repair time is in 'Failover duration'.",
        [
            ('meshcore:mttr_seconds:quantile_rate1h{quantile="0.5"}', "p50"),
            ('meshcore:mttr_seconds:quantile_rate1h{quantile="0.95"}', "p95"),
            ('meshcore:mttr_seconds:quantile_rate1h{quantile="0.99"}', "p99"),
        ],
        unit="s",
    ),
    PanelSpec(
        "Failover duration p50/p95/p99",
        "From dead-neighbour detection to the cached backup installed in the kernel "
        "(meshcore_failover_duration_seconds, recording rule over 1 h). Empty (NaN) while no "
        "failover happened in the hour.",
        [
            ('meshcore:failover_duration_seconds:quantile_rate1h{quantile="0.5"}', "p50"),
            ('meshcore:failover_duration_seconds:quantile_rate1h{quantile="0.95"}', "p95"),
            ('meshcore:failover_duration_seconds:quantile_rate1h{quantile="0.99"}', "p99"),
        ],
        unit="s",
    ),
    PanelSpec(
        "Mesh latency",
        "Smoothed hello round-trip time per node (mean over its mesh interfaces).",
        [(f"avg by (node) (meshcore_link_rtt_seconds{{{AGENT}}})", "{{node}}")],
        unit="s",
    ),
    PanelSpec(
        "Link loss",
        "Hello loss of the worst neighbour per node over the sensing window.",
        [(f"max by (node) (meshcore_link_loss_ratio{{{AGENT}}})", "{{node}}")],
        unit="percentunit",
        bounds=(0, 1),
    ),
    PanelSpec(
        "Slot-sync success",
        WAITING_PREFIX + "slots. Share of nodes holding a collision-free hello slot within two "
        "hops; the beacon superframe (slots/) does not exist yet.",
        [(f"avg(meshcore_slot_sync_success_ratio{{{AGENT}}})", "slot sync")],
        unit="percentunit",
        waiting_for="slots",
    ),
    PanelSpec(
        "eBPF overhead",
        WAITING_PREFIX + "ebpf. CPU spent in the tracepoint probes, as a share of one core; "
        "the ebpf probes do not exist yet.",
        [(f"avg(meshcore_ebpf_cpu_overhead_ratio{{{AGENT}}})", "eBPF CPU")],
        unit="percentunit",
        waiting_for="ebpf",
    ),
    PanelSpec(
        "k-disjoint path availability",
        "Share of (source, destination) pairs with k disjoint paths, and with at least a "
        "backup path (recording rules over meshcore_protection_coverage_ratio).",
        [
            ("meshcore:destinations_with_k_disjoint:ratio", "k disjoint paths"),
            ("meshcore:destinations_with_backup:ratio", "backup path"),
        ],
        unit="percentunit",
        bounds=(0, 1),
    ),
    PanelSpec(
        "Self-healing events",
        "Local failovers to a prepared backup, per node, in the last 5 minutes.",
        [(f"sum by (node) (increase(meshcore_failovers_total{{{AGENT}}}[5m]))", "{{node}}")],
    ),
    PanelSpec(
        "Topology changes",
        "Graph changes that triggered a path recompute, per second over the whole mesh "
        "(meshcore:topology_changes:rate5m).",
        [("meshcore:topology_changes:rate5m", "changes/s")],
        unit="ops",
    ),
    PanelSpec(
        "Reachability per node",
        "Share of the other live agents each node has a route to "
        "(node:meshcore_reachability:ratio); below 1 for 2 minutes fires MeshPartitioned.",
        [("node:meshcore_reachability:ratio", "{{node}}")],
        unit="percentunit",
        bounds=(0, 1),
    ),
    PanelSpec(
        "Certificate lifetime left",
        "Seconds until each node's X.509-SVID expires; under a quarter of its lifetime "
        "(at most 7 days) fires MeshCertificateNearExpiry.",
        [(f"meshcore_identity_cert_expiry_timestamp_seconds{{{AGENT}}} - time()", "{{node}}")],
        unit="s",
    ),
]


def build() -> dict[str, object]:
    board = (
        Dashboard("mesh-core")
        .uid("mesh-core")
        .description("mesh-core fleet: availability, repair, paths, topology (generated by "
                     "meshcore_tools/grafana/dashboard.py; do not edit the JSON)")
        .tags(["mesh-core", "generated"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
    )
    for number, spec in enumerate(PANELS, 1):
        panel: Stat | Timeseries
        if spec.kind == "stat":
            panel = (
                Stat()
                .graph_mode(BigValueGraphMode.AREA)
                .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            )
        else:
            panel = Timeseries().legend(
                VizLegendOptions()
                .display_mode(LegendDisplayMode.LIST)
                .placement(LegendPlacement.BOTTOM)
                .show_legend(True)
            )
        panel = (
            panel.id(number)
            .title(spec.title + (f" (waiting: {spec.waiting_for})" if spec.waiting_for else ""))
            .description(spec.description)
            .datasource(DATASOURCE)
            .unit(spec.unit)
            .height(8)
            .span(8)
        )
        if spec.bounds is not None:
            panel = panel.min(spec.bounds[0]).max(spec.bounds[1])
        for i, (expr, legend) in enumerate(spec.queries):
            panel = panel.with_target(
                Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i))
                .datasource(DATASOURCE)
            )
        board = board.with_panel(panel)
    built: dict[str, object] = json.loads(JSONEncoder(sort_keys=True).encode(board.build()))
    return built


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--check", action="store_true", help="fail if the committed JSON is stale")
    p.add_argument("--output", type=Path, default=OUTPUT)
    args = p.parse_args()
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            sys.stdout.writelines(difflib.unified_diff(
                current.splitlines(True), text.splitlines(True), str(args.output), "generated"))
            print(f"{args.output} is stale: run make dashboard", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output} ({len(PANELS)} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
