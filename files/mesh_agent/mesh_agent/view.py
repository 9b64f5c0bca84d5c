"""The running agent's state, read-only: what the API serves and the metrics collector reads.

:class:`AgentView` holds the cores (by reference) and answers with plain
data (dicts, lists, numbers): nothing it returns can change a core. It is also
the one place that decides readiness: ``/readyz``, the ``meshcore_converged``
gauge and the logs all ask :meth:`AgentView.readiness`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from cryptography import x509
from cryptography.hazmat.primitives import hashes

import mesh_agent
from mesh_agent.config import AgentConfig
from mesh_agent.counters import Histogram
from mesh_agent.identity import Identity, life_used, spiffe_id
from mesh_agent.identity.clock import ClockTrust
from mesh_agent.identity.hellokeys import HelloKeys
from mesh_agent.identity.watch import IdentityWatcher
from mesh_agent.link.backend import LinkBackend, make_backend
from mesh_agent.link.sensor import LinkSensor, Neighbor
from mesh_agent.link.sockets import MeshSockets
from mesh_agent.link.stretch import HelloStretch
from mesh_agent.mapek.knowledge import Knowledge
from mesh_agent.mapek.loop import MapeK
from mesh_agent.mapek.maintenance import Window
from mesh_agent.mapek.monitor import LinkSample, Observation
from mesh_agent.paths import PathTable
from mesh_agent.paths.schedule import ComputeSchedule
from mesh_agent.routes.failover import FailoverPolicy
from mesh_agent.routes.programmer import RouteProgrammer
from mesh_agent.store.events import EventLog
from mesh_agent.topology.core import ORDINARY_REASONS, TopologyCore
from mesh_agent.topology.lsdb import LinkStateDB, SeqStore

# PathTable.update durations (meshcore_path_computation_seconds).
COMPUTE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


def cut_off_by(graph: nx.Graph, node: str, neighbour: str) -> set[str]:
    """The nodes of *graph* that *node* reaches only through *neighbour*. Isolating a
    neighbour is local and safe only when this is empty: every advert then still reaches
    us by another way, so our link-state database stays the one the others hold (routing
    over databases that differ can loop)."""
    if node not in graph or neighbour not in graph:
        return set()
    rest = graph.subgraph(n for n in graph if n != neighbour)
    return set(nx.node_connected_component(graph, node)) - {neighbour} \
        - set(nx.node_connected_component(rest, node))


@dataclass
class AgentView:
    cfg: AgentConfig
    clock: Callable[[], float]
    sensor: LinkSensor
    stretch: HelloStretch
    topology: TopologyCore
    schedule: ComputeSchedule
    paths: PathTable
    routes: RouteProgrammer
    failover: FailoverPolicy
    sockets: MeshSockets
    identity: Identity
    clock_trust: ClockTrust
    events: EventLog
    watcher: IdentityWatcher | None = None  # set once the agent follows rotations
    api_refused: Counter[str] = field(default_factory=lambda: Counter({"limit": 0, "idle": 0}))
    path_seconds: Histogram = field(default_factory=lambda: Histogram(COMPUTE_BUCKETS))
    mapek: MapeK | None = None  # the self-healing loop, when mapek.enabled
    knowledge: Knowledge | None = None
    maintenance: Window | None = None  # the window open at the loop's last sample

    @classmethod
    def build(
        cls,
        cfg: AgentConfig,
        identity: Identity,
        clock: Callable[[], float],
        wall: Callable[[], float],
        seq_store: SeqStore | None = None,
        clock_trust: ClockTrust | None = None,
        events: EventLog | None = None,
    ) -> tuple[AgentView, LinkBackend]:
        """Every core of one node from its config (routes in observe mode until enforce starts)."""
        lsdb = LinkStateDB(identity, str(cfg.node_address), cfg.advert_max_age_s, seq_store)
        backend = make_backend(cfg, HelloKeys(identity, lsdb.cert_of), clock, lsdb.addresses)
        trust = clock_trust or ClockTrust(
            cfg.clock_trust, max(c.not_valid_before_utc for c in identity.bundle))
        view = cls(
            cfg, clock, backend.sensor,
            HelloStretch(cfg.hello_interval_s, cfg.dead_multiplier, clock()),
            TopologyCore(lsdb, cfg.advert_interval_s), ComputeSchedule(),
            PathTable(cfg.node_name, k=cfg.k, disjoint=cfg.disjoint),
            RouteProgrammer(None, cfg.route_protocol, str(cfg.node_address), clock),
            FailoverPolicy(),
            MeshSockets(cfg.udp_port, cfg.advert_port, backend.echo, clock, wall),
            identity, trust, events if events is not None else EventLog.disabled())
        return view, backend

    @property
    def node_name(self) -> str:
        return self.cfg.node_name

    @property
    def mode(self) -> str:
        return self.cfg.mode

    # -- readiness: the one place -----------------------------------------
    def readiness(self) -> dict[str, bool]:
        return {
            "neighbors_known": bool(self.sensor.up_neighbors()),
            "own_advert": self.topology.lsdb.has_own(),
            "paths_current": self.schedule.current,
            "routes_programmed": self.routes.last_sync_ok,
        }

    def ready(self) -> bool:
        return all(self.readiness().values())

    def readiness_detail(self) -> dict[str, float | int]:
        """What a failing check needs to be read: a flicker or a stuck state (``/readyz``)."""
        return {
            "neighbors_up": len(self.sensor.up_neighbors()),
            "paths_pending_seconds": round(self.schedule.pending_s(self.clock()), 3),
            "path_computations_total": self.schedule.computations_total,
            "route_errors_total": self.routes.errors_total,
            "route_syncs_preempted_total": self.routes.preempted_total,
        }

    # -- what the API serves ----------------------------------------------
    def echo_mode(self, nb: Neighbor) -> str:
        """How *nb*'s death is detected: ``echo`` (its kernel answers our echo probes),
        ``pending`` (probes sent, none answered yet: hellos judge), ``off`` (echo probes
        disabled in the config) or ``batman`` (batman-adv judges, no probes)."""
        if self.cfg.link.backend == "batman":
            return "batman"
        if not self.cfg.link.echo:
            return "off"
        return "echo" if nb.echo_active else "pending"

    def neighbors(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [
            {
                "name": nb.name,
                "interface": nb.ifname,
                "link_address": nb.link_address,
                "node_address": nb.node_address,
                "state": nb.state,
                "loss": round(nb.loss(), 4),
                "rtt_seconds": nb.rtt_s,
                "age_seconds": round(nb.age(now), 3),  # since it came up (or was first heard)
                "heard_seconds_ago": round(now - nb.last_rx, 3),  # its last hello
                "cost": nb.cost(),
                "penalty": self.sensor.penalties.get(nb.name, 0.0),
                "last_seq": nb.last_seq,
                # (heard, expected) of its hellos, counted on across its sessions here: the
                # MAPE-K monitor's loss reading (None where batman-adv judges the link)
                "hello_counts": nb.hello_counts(),
                "echo_mode": self.echo_mode(nb),
                # Silence that kills it, sized to the loss measured (mesh_agent.link.sensor),
                # and the share of our last echo probes it left unanswered (None: too few).
                "dead_after_seconds": round(self.sensor.detection_s(nb), 4),
                "probe_loss": None if (share := nb.echo_window.share()) is None
                else round(share, 4),
            }
            for nb in self.sensor.neighbors()
        ]

    def graph(self) -> nx.Graph:
        """The mesh as the LSDB sees it (a fresh graph, the caller's to keep)."""
        return self.topology.lsdb.graph()

    def topology_view(self) -> dict[str, Any]:
        g = self.graph()
        now = self.clock()
        return {
            "nodes": [
                {"name": n, "address": d.get("address")} for n, d in sorted(g.nodes(data=True))
            ],
            "edges": [
                {"a": a, "b": b, "cost": d.get("cost")} for a, b, d in sorted(g.edges(data=True))
            ],
            "lsdb": {
                origin: {"seq": e.advert.seq, "age_seconds": round(now - e.born, 3)}
                for origin, e in sorted(self.topology.lsdb.entries().items())
            },
        }

    def coverage(self) -> dict[str, float]:
        return dict(self.paths.coverage())

    def routes_view(self) -> dict[str, dict[str, Any]]:
        return {
            r.destination: {
                "address": r.address,
                "group_id": r.group_id,
                "active_next_hop": r.active,
            }
            for r in self.routes.installed()
        }

    def paths_view(self) -> dict[str, dict[str, Any]]:
        installed = self.routes_view()
        return {
            dst: {
                "primary_next_hop": ch.primary_next_hop,
                "backup_next_hop": ch.backup_next_hop,
                "backup_loop_free": ch.backup_loop_free,
                "backup_node_protecting": ch.backup_node_protecting,
                "backup_rule": ch.backup_rule,
                "cost": ch.cost,
                "installed": dst in installed,
            }
            for dst, ch in sorted(self.paths.choices().items())
        }

    def path(self, dst: str) -> dict[str, Any] | None:
        ch = self.paths.get(dst)
        if ch is None:
            return None
        return {
            "destination": dst,
            "primary": list(ch.primary),
            "backup": None if ch.backup is None else list(ch.backup),
            "disjoint": [list(p) for p in ch.disjoint],
            "primary_next_hop": ch.primary_next_hop,
            "backup_next_hop": ch.backup_next_hop,
            "backup_loop_free": ch.backup_loop_free,
            "backup_node_protecting": ch.backup_node_protecting,
            "backup_rule": ch.backup_rule,
            "protected_links": [
                {"a": a, "b": b, "protected": p} for (a, b), p in ch.protected_links.items()
            ],
            "cost": ch.cost,
            "route": self.routes_view().get(dst),
        }

    def last_failover(self) -> dict[str, Any] | None:
        last = self.failover.last
        return None if last is None else dict(last)

    def agent_view(self) -> dict[str, Any]:
        """What runs here: version, mode and link backend (``meshctl status``, the fleet table)."""
        return {
            "node": self.node_name,
            "version": mesh_agent.__version__,
            "mode": self.mode,
            "link_backend": self.cfg.link.backend,
            "echo": self.cfg.link.echo,
            "address": str(self.cfg.node_address),
        }

    # -- the self-healing loop --------------------------------------------
    def observation(self, cpu_seconds: float, wall: float | None = None) -> Observation:
        """What the loop's Monitor reads (:mod:`mesh_agent.mapek.monitor`), now; *wall*:
        the time of day, for our certificate's age (read only once the clock is trusted)."""
        rejected = self.topology.lsdb.rejected
        return Observation(
            at=self.clock(),
            # Every neighbour heard, up or not (held down after a flap: its hellos count).
            links=tuple(LinkSample(nb.name, nb.loss(), nb.rtt_s if nb.state == "up" else None,
                                   nb.hello_counts(), nb.ifname, nb.state == "up")
                        for nb in self.sensor.neighbors()),
            lateness_s=self.stretch.lag_s,
            failovers_total=self.failover.failovers_total,
            rejected_total=sum(n for r, n in rejected.items() if r not in ORDINARY_REASONS),
            rejected_from=tuple(sorted(self.rejected_by_neighbor().items())),
            isolated_from=tuple(sorted(self.by_neighbor(self.topology.isolated_from).items())),
            changes_total=self.topology.changes_total,
            edge_changes=tuple(sorted(self.topology.edge_changes.items())),
            cpu_seconds=cpu_seconds,
            ready=self.ready(),
            link_downs=tuple(sorted(self.sensor.downs.items())),
            sole_links=frozenset(n for n in self.sensor.downs if self.sole_link(n)),
            isolated_cut=self.isolated_cut(),
            routes_via=tuple(sorted(self.routes_via().items())),
            routes_left=tuple(sorted(self.routes.via_left.items())),
            identity_age=(life_used(self.identity.cert, wall)
                          if wall is not None and self.identity.check_validity else None),
        )

    def rejected_by_neighbor(self) -> dict[str, int]:
        """Per neighbour, the adverts refused that it sent (over any of its links: the
        topology core's ``rejected_from``, by the hop they came from)."""
        return self.by_neighbor(self.topology.rejected_from)

    def by_neighbor(self, per_hop: Mapping[tuple[str, str], int]) -> dict[str, int]:
        """Counts per (interface, link address) hop summed per neighbour (hops of no
        neighbour left out)."""
        names = {(nb.ifname, nb.link_address): nb.name for nb in self.sensor.neighbors()}
        out: dict[str, int] = {}
        for hop, n in per_hop.items():
            if (name := names.get(hop)) is not None:
                out[name] = out.get(name, 0) + n
        return out

    def isolated_cut(self) -> frozenset[str]:
        """The isolated neighbours (isolate_origin) that some node now reaches us only
        through: the topology changed since the isolation began, and those nodes' adverts
        would go stale here (the loop lifts the isolation)."""
        now = self.clock()
        hops = {h for h, until in self.topology.isolated.items() if now < until}
        if not hops:
            return frozenset()
        names = {nb.name for nb in self.sensor.neighbors()
                 if (nb.ifname, nb.link_address) in hops}
        graph, node = self.graph(), self.cfg.node_name
        return frozenset(n for n in names if cut_off_by(graph, node, n))

    def neighbor_hops(self, name: str) -> list[tuple[str, str]]:
        """The (interface, link address) hops of neighbour *name*, up or not."""
        return [(nb.ifname, nb.link_address) for nb in self.sensor.neighbors()
                if nb.name == name]

    def routes_via(self) -> dict[str, int]:
        """Per neighbour, our installed routes whose active next hop it is (what crosses
        our link to it now), the route to the neighbour itself included: with a detour, a
        quarantined or held link's own traffic goes round too."""
        return dict(self.routes.via)

    def sole_link(self, name: str) -> bool:
        """Whether the direct link to neighbour ``name`` is our only way to it now: no
        route to it at all, or a primary over the link with no detour (a bridge, from the
        path table's last update). Holding such a link down would cut it off."""
        ch = self.paths.get(name)
        if ch is None:
            return True
        if len(ch.primary) != 2:
            return False  # reached another way already
        return not ch.protected_links.get((ch.primary[0], name), False)

    def incidents(self, limit: int = 100, open_only: bool = False) -> dict[str, Any]:
        """The chain signal -> incident -> action -> outcome (``/v1/incidents``)."""
        m, k = self.mapek, self.knowledge
        cfg = self.cfg.mapek
        return {
            "node": self.node_name,
            "enabled": m is not None,
            "armed": m is not None and m.armed,
            "mode": cfg.mode,
            "policy": cfg.policy,
            "thresholds": m.thresholds.as_dict() if m is not None else {},
            "active_actions": m.active_actions() if m is not None else [],
            # What the loop has learned: per (class, action), tries and outcomes.
            "action_stats": m.action_stats() if m is not None else [],
            "knowledge": "unavailable" if k is None or not k.available else "ok",
            # Incidents are recorded, not acted on, until it ends (mapek.maintenance).
            "maintenance": self.maintenance.as_dict() if self.maintenance is not None else None,
            "incidents": k.incidents(limit, open_only) if k is not None else [],
        }

    def identity_view(self) -> dict[str, Any]:
        """The node's SVID and trust bundle as an operator checks them (no key material)."""

        def cert(c: x509.Certificate) -> dict[str, Any]:
            return {
                "subject": c.subject.rfc4514_string(),
                "serial": format(c.serial_number, "x"),
                "not_before": c.not_valid_before_utc.timestamp(),
                "not_after": c.not_valid_after_utc.timestamp(),
                "sha256": c.fingerprint(hashes.SHA256()).hex(),
            }

        ident = self.identity
        w = self.watcher
        return {
            "spiffe_id": spiffe_id(ident.trust_domain, ident.node_name),
            "certificate": cert(ident.cert),
            "bundle": [cert(c) for c in ident.bundle],
            # files unless the agent follows the SPIFFE Workload API (mesh_agent.identity.watch).
            "source": w.source.name if w is not None else "files",
            "following_rotations": w is not None,
            "rotations": w.rotations if w is not None else 0,
            "reload_errors": w.errors if w is not None else 0,
            "clock_trusted": self.clock_trust.trusted,
            "validity_checked": ident.check_validity,
        }
