"""Prometheus metrics of one agent, in their own registry.

Names follow ``meshcore_<thing>_<unit>`` with base units and ``_total`` for
counters. Labels are bounded: interface names (a node has a handful) and
closed reason sets; never a node or node-pair label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mesh_agent.topology.lsdb import REJECT_REASONS

# Failover is sub-millisecond when nothing goes wrong; the top buckets catch
# a netlink socket stalled behind a large sync.
FAILOVER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
COMPUTE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


# (interface, smoothed RTT or None, loss ratio) for every up neighbour.
LinkSample = tuple[str, float | None, float]


class _LinkCollector(Collector):
    """Per-interface RTT and loss, read from the neighbour table at scrape time.

    Setting labelled gauges on every hello tick cost more CPU than the hellos
    themselves; a scrape every few seconds reads the same numbers once.
    """

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[LinkSample]] = list

    def describe(self) -> Iterable[Metric]:
        return [
            GaugeMetricFamily("meshcore_link_rtt_seconds", "Smoothed hello RTT per interface"),
            GaugeMetricFamily("meshcore_link_loss_ratio", "Hello loss per interface"),
        ]

    def collect(self) -> Iterator[Metric]:
        rtt = GaugeMetricFamily(
            "meshcore_link_rtt_seconds", "Smoothed hello RTT per interface", labels=["interface"]
        )
        loss = GaugeMetricFamily(
            "meshcore_link_loss_ratio",
            "Hello loss over the window per interface (the worst neighbour on it)",
            labels=["interface"],
        )
        rtts: dict[str, list[float]] = {}
        losses: dict[str, float] = {}
        for ifname, rtt_s, loss_ratio in self.source():
            if rtt_s is not None:
                rtts.setdefault(ifname, []).append(rtt_s)
            losses[ifname] = max(loss_ratio, losses.get(ifname, 0.0))
        for ifname, values in sorted(rtts.items()):
            rtt.add_metric([ifname], sum(values) / len(values))
        for ifname, value in sorted(losses.items()):
            loss.add_metric([ifname], value)
        yield rtt
        yield loss


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.neighbors_up = Gauge("meshcore_neighbors_up", "Neighbours in state up", registry=r)
        self.hellos_rx = Counter("meshcore_hellos_received_total", "Hellos accepted", registry=r)
        self.hellos_tx = Counter("meshcore_hellos_sent_total", "Hellos sent", registry=r)
        self.echo_probes = Counter(
            "meshcore_echo_probes_total",
            "Kernel echo probes to neighbours (BFD echo function), sent and answered",
            ["kind"],
            registry=r,
        )
        for kind in ("sent", "answered"):
            self.echo_probes.labels(kind)
        self.hello_announced = Gauge(
            "meshcore_hello_announced_interval_seconds",
            "Hello interval our hellos announce (stretched while our timers run late)",
            registry=r,
        )
        self.hellos_dropped = Counter(
            "meshcore_hellos_dropped_total", "Hellos dropped", ["reason"], registry=r
        )
        self.neighbor_damped = Counter(
            "meshcore_neighbor_damped_total",
            "Hellos that would have brought a flapping neighbour up during hold-down",
            registry=r,
        )
        self._links = _LinkCollector()
        r.register(self._links)
        self.adverts_rx = Counter("meshcore_adverts_received_total", "Adverts received", registry=r)
        self.adverts_accepted = Counter(
            "meshcore_adverts_accepted_total", "Adverts accepted into the LSDB", registry=r
        )
        self.adverts_duplicate = Counter(
            "meshcore_adverts_duplicate_total",
            "Byte-identical copies of stored adverts (normal flooding echo)",
            registry=r,
        )
        self.adverts_rejected = Counter(
            "meshcore_adverts_rejected_total", "Adverts rejected", ["reason"], registry=r
        )
        for reason in REJECT_REASONS:
            self.adverts_rejected.labels(reason)
        self.socket_drops = Counter(
            "meshcore_socket_drops_total",
            "Datagrams the kernel dropped before the agent read them: not sent with TTL 255"
            " (GTSM filter) or a full queue",
            ["socket"],
            registry=r,
        )
        for kind in ("hello", "advert"):
            self.socket_drops.labels(kind)
        self.api_refused = Counter(
            "meshcore_api_connections_refused_total",
            "API connections closed unserved: over the connection limit, or idle",
            ["reason"],
            registry=r,
        )
        for reason in ("limit", "idle"):
            self.api_refused.labels(reason)
        self.clock_trusted = Gauge(
            "meshcore_clock_trusted",
            "1 while the clock is trusted and certificate validity windows are checked",
            registry=r,
        )
        self.adverts_originated = Counter(
            "meshcore_adverts_originated_total", "Adverts this node signed", registry=r
        )
        self.lsdb_size = Gauge("meshcore_lsdb_adverts", "Adverts in the LSDB", registry=r)
        self.topology_nodes = Gauge("meshcore_topology_nodes", "Nodes in the graph", registry=r)
        self.topology_edges = Gauge("meshcore_topology_edges", "Two-way edges", registry=r)
        self.topology_changes = Counter(
            "meshcore_topology_changes_total",
            "Graph changes that triggered recompute",
            registry=r,
        )
        self.destinations = Gauge(
            "meshcore_destinations_reachable", "Destinations with a route", registry=r
        )
        self.coverage = Gauge(
            "meshcore_protection_coverage_ratio",
            "Protection coverage from the path table",
            ["kind"],
            registry=r,
        )
        self.failovers = Counter(
            "meshcore_failovers_total", "Local switches to a prepared backup", registry=r
        )
        self.failover_seconds = Histogram(
            "meshcore_failover_duration_seconds",
            "From dead-neighbour detection to backup installed",
            buckets=FAILOVER_BUCKETS,
            registry=r,
        )
        self.routes_installed = Gauge(
            "meshcore_routes_installed",
            "Routes in the kernel (enforce) or computed (observe)",
            registry=r,
        )
        self.routes_standby = Gauge(
            "meshcore_routes_standby",
            "Standby routes via a backup next hop, taken over by the kernel itself on carrier loss",
            registry=r,
        )
        self.route_errors = Counter(
            "meshcore_route_errors_total", "Failed netlink operations", registry=r
        )
        self.converged = Gauge("meshcore_converged", "1 when the agent is converged", registry=r)
        self.path_seconds = Histogram(
            "meshcore_path_computation_seconds",
            "PathTable.update duration",
            buckets=COMPUTE_BUCKETS,
            registry=r,
        )
        self.identity_source = Gauge(
            "meshcore_identity_source",
            "1 for the source the node's X.509-SVID comes from (files or workload_api)",
            ["source"],
            registry=r,
        )
        self.identity_cert_expiry = Gauge(
            "meshcore_identity_cert_expiry_timestamp_seconds",
            "When this node's X.509-SVID expires (Unix time); peers reject its adverts after",
            registry=r,
        )
        self.identity_rotations = Counter(
            "meshcore_identity_rotations_total",
            "Key, certificate and bundle swaps picked up while running",
            registry=r,
        )
        self.identity_errors = Counter(
            "meshcore_identity_reload_errors_total",
            "New identities that did not load or verify (the old one was kept)",
            registry=r,
        )

    def watch_links(self, source: Callable[[], Iterable[LinkSample]]) -> None:
        """Report per-interface RTT and loss from *source* at scrape time."""
        self._links.source = source
