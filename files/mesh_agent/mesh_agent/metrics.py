"""The agent's Prometheus metrics: one collector that reads the cores at scrape time.

The cores keep plain counters (integers, :class:`collections.Counter` by
reason, :class:`mesh_agent.counters.Histogram`); nothing increments a
Prometheus object on the hot path, nothing is counted in two places, and no
gauge copies another. :class:`AgentCollector` turns what the cores hold into
metric families when Prometheus scrapes (client_python's custom collector).

Names follow ``meshcore_<thing>_<unit>`` with base units and ``_total`` for
counters. Labels are bounded: interface names (a node has a handful) and
closed reason sets; never a node or node-pair label.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from mesh_agent.counters import Histogram
from mesh_agent.mapek.analyze import IncidentClass
from mesh_agent.mapek.loop import ACTION_OUTCOMES, MTTR_BUCKETS
from mesh_agent.mapek.monitor import DEFAULT_BOUNDS
from mesh_agent.mapek.plan import ActionKind
from mesh_agent.routes.failover import FAILOVER_BUCKETS
from mesh_agent.store.events import EventKind
from mesh_agent.topology.lsdb import REJECT_REASONS

if TYPE_CHECKING:
    from mesh_agent.view import AgentView

ECHO_KINDS = ("sent", "answered")
SOCKET_KINDS = ("hello", "advert")
API_REFUSALS = ("limit", "idle")


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _by(
    family: CounterMetricFamily | GaugeMetricFamily,
    values: Mapping[str, float],
    always: Iterable[str] = (),
) -> CounterMetricFamily | GaugeMetricFamily:
    """Add one sample per label value: ``always`` ones (0 when absent), then the rest."""
    for key in [*always, *sorted(set(values) - set(always))]:
        family.add_metric([key], values.get(key, 0))
    return family


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.cumulative(), sum_value=h.sum)


class AgentCollector(Collector):
    """Every agent metric, read from an :class:`~mesh_agent.view.AgentView` at scrape time.

    Without a view (``None``: a test, or before the agent is built) each family
    is still there, at zero, so the set of series never depends on timing.
    """

    def __init__(self, view: AgentView | None = None) -> None:
        self.view = view

    def describe(self) -> Iterable[Metric]:
        view, self.view = self.view, None
        try:
            return list(self.collect())
        finally:
            self.view = view

    def collect(self) -> Iterator[Metric]:
        v = self.view
        yield from self._link(v)
        yield from self._topology(v)
        yield from self._routes(v)
        yield from self._identity(v)
        yield from self._shell(v)
        yield from self._mapek(v)

    def _link(self, v: AgentView | None) -> Iterator[Metric]:
        s = v.sensor if v is not None else None
        up = s.up_neighbors() if s is not None else []
        yield _gauge("meshcore_neighbors_up", "Neighbours in state up", len(up))
        yield _counter("meshcore_hellos_received_total", "Hellos accepted",
                       s.rx_total if s else 0)
        yield _counter("meshcore_hellos_sent_total", "Hellos sent", s.tx_total if s else 0)
        yield _by(CounterMetricFamily(
            "meshcore_echo_probes_total",
            "Kernel echo probes to neighbours (BFD echo function), sent and answered",
            labels=["kind"]),
            {"sent": s.echo_tx_total, "answered": s.echo_rx_total} if s else {}, ECHO_KINDS)
        yield _gauge("meshcore_hello_announced_interval_seconds",
                     "Hello interval our hellos announce (stretched while our timers run late)",
                     v.stretch.announced_s if v else 0.0)
        drops: dict[str, float] = {}
        if s is not None and v is not None:
            drops = {k: n for k, n in s.drops.items() if k != "self"}  # our own echo: expected
            drops["internal_error"] = drops.get("internal_error", 0) + v.sockets.guard_errors[
                "hello"]
        yield _by(CounterMetricFamily("meshcore_hellos_dropped_total", "Hellos dropped",
                                      labels=["reason"]), drops)
        yield _counter("meshcore_neighbor_damped_total",
                       "Hellos that would have brought a flapping neighbour up during hold-down",
                       s.damped_total if s else 0)
        rtt = GaugeMetricFamily("meshcore_link_rtt_seconds", "Smoothed hello RTT per interface",
                                labels=["interface"])
        loss = GaugeMetricFamily(
            "meshcore_link_loss_ratio",
            "Hello loss over the window per interface (the worst neighbour on it)",
            labels=["interface"])
        rtts: dict[str, list[float]] = {}
        losses: dict[str, float] = {}
        for nb in up:
            if nb.rtt_s is not None:
                rtts.setdefault(nb.ifname, []).append(nb.rtt_s)
            losses[nb.ifname] = max(nb.loss(), losses.get(nb.ifname, 0.0))
        for ifname, values in sorted(rtts.items()):
            rtt.add_metric([ifname], sum(values) / len(values))
        for ifname, value in sorted(losses.items()):
            loss.add_metric([ifname], value)
        yield rtt
        yield loss
        yield _by(CounterMetricFamily(
            "meshcore_socket_drops_total",
            "Datagrams the kernel dropped before the agent read them: not sent with TTL 255"
            " (GTSM filter) or a full queue", labels=["socket"]),
            v.sockets.kernel_drops if v else {}, SOCKET_KINDS)

    def _topology(self, v: AgentView | None) -> Iterator[Metric]:
        t = v.topology if v is not None else None
        db = t.lsdb if t is not None else None
        yield _counter("meshcore_adverts_received_total", "Adverts received",
                       db.rx_total if db else 0)
        yield _counter("meshcore_adverts_accepted_total", "Adverts accepted into the LSDB",
                       db.accepted_total if db else 0)
        yield _counter("meshcore_adverts_duplicate_total",
                       "Byte-identical copies of stored adverts (normal flooding echo)",
                       db.duplicate_total if db else 0)
        rejected: dict[str, float] = dict(db.rejected) if db else {}
        if v is not None:
            rejected["internal_error"] = (rejected.get("internal_error", 0)
                                          + v.sockets.guard_errors["advert"])
        yield _by(CounterMetricFamily("meshcore_adverts_rejected_total", "Adverts rejected",
                                      labels=["reason"]), rejected, REJECT_REASONS)
        yield _counter("meshcore_adverts_originated_total", "Adverts this node signed",
                       t.originated_total if t else 0)
        yield _counter("meshcore_adverts_isolated_total",
                       "Adverts dropped unread from an isolated neighbour (isolate_origin)",
                       t.isolated_total if t else 0)
        yield _gauge("meshcore_isolated_hops", "Neighbour hops whose adverts are dropped now",
                     len(t.isolated) if t else 0)
        yield _gauge("meshcore_lsdb_adverts", "Adverts in the LSDB", len(db) if db else 0)
        yield _gauge("meshcore_topology_nodes", "Nodes in the graph of the last path computation",
                     t.nodes if t else 0)
        yield _gauge("meshcore_topology_edges",
                     "Two-way edges in the graph of the last path computation",
                     t.edges if t else 0)
        yield _counter("meshcore_topology_changes_total", "Graph changes that triggered recompute",
                       t.changes_total if t else 0)

    def _routes(self, v: AgentView | None) -> Iterator[Metric]:
        yield _gauge("meshcore_destinations_reachable",
                     "Destinations the path table reaches (computed paths)",
                     len(v.paths.choices()) if v else 0)
        yield _by(GaugeMetricFamily("meshcore_protection_coverage_ratio",
                                    "Protection coverage from the path table", labels=["kind"]),
                  v.coverage() if v else {})
        yield _counter("meshcore_failovers_total", "Local switches to a prepared backup",
                       v.failover.failovers_total if v else 0)
        yield _histogram("meshcore_failover_duration_seconds",
                         "From dead-neighbour detection to backup installed",
                         v.failover.duration if v else Histogram(FAILOVER_BUCKETS))
        yield _gauge("meshcore_routes_installed",
                     "Routes the agent holds: in the kernel (enforce) or as it would (observe)",
                     v.routes.route_count() if v else 0)
        yield _gauge("meshcore_routes_standby",
                     "Standby routes via a backup next hop, taken over by the kernel itself on "
                     "carrier loss", v.routes.standby_count() if v else 0)
        yield _counter("meshcore_route_errors_total", "Failed netlink operations",
                       v.routes.errors_total if v else 0)
        yield _counter("meshcore_route_detours_total",
                       "Routes moved straight to their backup's next hop because an advert "
                       "removed a link their primary crossed (remote detours)",
                       v.routes.detours_total if v else 0)
        yield _gauge("meshcore_converged", "1 when the agent is converged (ready)",
                     1 if v is not None and v.ready() else 0)
        if v is not None:
            yield _histogram("meshcore_path_computation_seconds", "PathTable.update duration",
                             v.path_seconds)
        else:
            from mesh_agent.view import COMPUTE_BUCKETS

            yield _histogram("meshcore_path_computation_seconds", "PathTable.update duration",
                             Histogram(COMPUTE_BUCKETS))

    def _identity(self, v: AgentView | None) -> Iterator[Metric]:
        source = GaugeMetricFamily(
            "meshcore_identity_source",
            "1 for the source the node's X.509-SVID comes from (files or workload_api)",
            labels=["source"])
        w = v.watcher if v is not None else None
        if w is not None:
            source.add_metric([w.source.name], 1)
        yield source
        yield _gauge("meshcore_identity_cert_expiry_timestamp_seconds",
                     "When this node's X.509-SVID expires (Unix time); peers reject its adverts"
                     " after", v.identity.cert.not_valid_after_utc.timestamp() if v else 0)
        # With the expiry, the certificate's lifetime: MeshCertificateNearExpiry alerts on
        # the part of it left, so day-long SPIFFE SVIDs are not always "near expiry".
        yield _gauge("meshcore_identity_cert_not_before_timestamp_seconds",
                     "When this node's X.509-SVID became valid (Unix time)",
                     v.identity.cert.not_valid_before_utc.timestamp() if v else 0)
        yield _counter("meshcore_identity_rotations_total",
                       "Key, certificate and bundle swaps picked up while running",
                       w.rotations if w else 0)
        yield _counter("meshcore_identity_reload_errors_total",
                       "New identities that did not load or verify (the old one was kept)",
                       w.errors if w else 0)
        yield _gauge("meshcore_clock_trusted",
                     "1 while the clock is trusted and certificate validity windows are checked",
                     1 if v is not None and v.clock_trust.trusted else 0)

    def _shell(self, v: AgentView | None) -> Iterator[Metric]:
        yield _by(CounterMetricFamily(
            "meshcore_api_connections_refused_total",
            "API connections closed unserved: over the connection limit, or idle",
            labels=["reason"]), v.api_refused if v else {}, API_REFUSALS)
        log = v.events if v is not None else None
        yield _counter("meshcore_events_recorded_total", "Records appended to the event log",
                       log.appended_total if log else 0)
        yield _by(CounterMetricFamily(
            "meshcore_events_suppressed_total",
            "Event records not written by the event log's per-kind rate limit",
            labels=["kind"]), log.suppressed_total if log else {},
            [k.value for k in (EventKind.ADVERT_REJECTED, EventKind.LINK_DOWN)])
        yield _counter("meshcore_event_log_errors_total",
                       "Event log writes or checkpoints that failed (disk full, read-only)",
                       log.errors_total if log else 0)


    def _mapek(self, v: AgentView | None) -> Iterator[Metric]:
        """The self-healing loop; every family is there (at zero) when the loop is off."""
        m = v.mapek if v is not None else None
        classes = [str(c) for c in IncidentClass]
        yield _by(CounterMetricFamily("meshcore_incidents_total",
                                      "Incidents the self-healing loop opened, by class",
                                      labels=["class"]),
                  m.analyzer.opened_total if m else {}, classes)
        for name, doc, hists in (
                ("meshcore_mttr_seconds", "Incident detection to recovery, by class",
                 m.mttr if m else {}),
                ("meshcore_mitigation_seconds",
                 "Link incident detection until none of our routes crossed the link, by class",
                 m.ttm if m else {})):
            fam = HistogramMetricFamily(name, doc, labels=["class"])
            for cls in classes:
                h = hists.get(cls) or Histogram(MTTR_BUCKETS)
                fam.add_metric([cls], h.cumulative(), h.sum)
            yield fam
        actions = CounterMetricFamily(
            "meshcore_remediation_actions_total",
            "Actions the loop chose, by what became of them (applied, observed, noop, refused)",
            labels=["action", "outcome"])
        done = m.actions_total if m else {}
        for kind in ActionKind:
            for outcome in ACTION_OUTCOMES:
                actions.add_metric([str(kind), outcome], done.get((str(kind), outcome), 0))
        yield actions
        thresholds = GaugeMetricFamily("meshcore_mapek_threshold",
                                       "The Monitor's current threshold per signal (base units)",
                                       labels=["signal"])
        values = m.thresholds.as_dict() if m else {}
        for signal in DEFAULT_BOUNDS:
            thresholds.add_metric([str(signal)], values.get(str(signal), 0.0))
        yield thresholds
        yield _gauge("meshcore_mapek_active_actions", "Remediation actions in force now",
                     len(m.executor.active) if m else 0)
        window = v.maintenance if v is not None else None
        yield _gauge("meshcore_mapek_maintenance_until_timestamp_seconds",
                     "The end of the maintenance window open now (0: none): incidents are "
                     "recorded, not acted on", window.until if window is not None else 0)
        yield _gauge("meshcore_mapek_leases_held",
                     "Disruptive-action leases held now (renewed while their action lasts)",
                     len(m.held) if m else 0)


class Metrics:
    """The agent's registry: one collector, reading an AgentView (``bind``) at scrape time."""

    def __init__(self, view: AgentView | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector = AgentCollector(view)
        self.registry.register(self.collector)

    def bind(self, view: AgentView) -> None:
        self.collector.view = view
