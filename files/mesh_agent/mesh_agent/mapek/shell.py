"""The MAPE-K loop inside the agent: its timer and the one place its ops become inputs of
the other cores. The decisions stay in :class:`.loop.MapeK`; this only moves data.

Built from what :class:`.knowledge.Knowledge` kept (action statistics, thresholds, the last
incident id), ticked every ``mapek.interval_s``, and every op is carried onto a core's
input: link quarantine onto :meth:`LinkSensor.set_penalty` (then an advert floods the new
cost), a longer hello onto :meth:`HelloStretch.set_floor`, an LSDB resync onto
:meth:`TopologyCore.neighbor_up` toward that neighbour. Disruptive descriptors (restart,
isolate an origin) have no executor here: they need a lease (docs/mapek.md). A blocking
lease provider (etcd) is called here in a worker thread, never on the event loop: the core
asks in its step (``lease_requests``) and gets the answer through :meth:`MapeK.leased`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import networkx as nx

from mesh_agent.config import AgentConfig
from mesh_agent.mapek.execute import Op
from mesh_agent.mapek.knowledge import Knowledge
from mesh_agent.mapek.lease import Refusal, neighbourhood
from mesh_agent.mapek.loop import START_SETTLE_S, LeaseRequest, MapeK, Step
from mesh_agent.mapek.monitor import Thresholds
from mesh_agent.mapek.plan import ActionKind, make_policy
from mesh_agent.mapek.safety import Lease, LeaseProvider, NoQuorum
from mesh_agent.store.events import EventKind, EventLog
from mesh_agent.timers import every
from mesh_agent.topology.core import Send
from mesh_agent.view import AgentView

log = logging.getLogger("mesh_agent")


def lease_provider(cfg: AgentConfig, graph: Callable[[], nx.Graph]) -> LeaseProvider:
    """etcd when ``mapek.lease.endpoints`` are configured (the gateways), else nothing is
    granted (:class:`NoQuorum`). The cap and the neighbourhood come from the LSDB's graph
    at each request; https endpoints get the node's own certificate (etcd requires one)."""
    lease = cfg.mapek.lease
    if not lease.endpoints:
        return NoQuorum()
    # Imported only here: the client (etcd3gw, requests) adds 12 MiB of RSS to an
    # agent that has no lease service configured.
    from mesh_agent.mapek.etcd import EtcdLeases

    node, ident = cfg.node_name, cfg.identity
    return EtcdLeases(lease.endpoints, lambda: neighbourhood(graph(), node),
                      cap_pct=lease.cap_pct, timeout_s=lease.timeout_s,
                      tls=(str(ident.ca), str(ident.cert), str(ident.key)))


class MapekShell:
    def __init__(
        self,
        cfg: AgentConfig,
        view: AgentView,
        events: EventLog,
        knowledge: Knowledge,
        clock: Callable[[], float],
        wall: Callable[[], float],
        cpu: Callable[[], float],
        originate: Callable[[], None],
        send: Callable[[Iterable[Send]], None],
    ) -> None:
        self.cfg, self.view, self.events, self.knowledge = cfg, view, events, knowledge
        self.clock, self.wall, self.cpu = clock, wall, cpu
        self.originate, self.send = originate, send
        m = cfg.mapek
        knowledge.boot = knowledge.boot or events.boot
        knowledge.mode, knowledge.policy = m.mode, m.policy
        if abandoned := knowledge.start_run():
            log.info("mapek: %d incident(s) left open by the previous run abandoned", abandoned)
        self.core = MapeK(cfg.node_name, m.mode, make_policy(m.policy), cfg.hello_interval_s,
                          interval_s=m.interval_s,
                          thresholds=Thresholds(values=knowledge.thresholds()),
                          stats=knowledge.stats(), next_id=knowledge.last_id() + 1,
                          settle_s=START_SETTLE_S, leases=lease_provider(cfg, view.graph),
                          lease_ttl_s=m.lease.ttl_s)
        view.mapek, view.knowledge = self.core, knowledge
        self._tasks: set[asyncio.Future[None]] = set()  # lease calls under way

    async def run(self) -> None:
        interval = self.cfg.mapek.interval_s
        await asyncio.sleep(interval)
        await every(self.clock, interval, self.tick)

    def tick(self) -> None:
        """One MAPE-K step: observe the view, record what changed, carry out the ops."""
        self.settle(self.core.step(self.view.observation(self.cpu())))

    def settle(self, step: Step) -> None:
        """Record a step, carry out its ops, and start its lease calls off the event loop."""
        self.knowledge.record(step, self.wall())
        for op in step.ops:
            self.carry(op)
        for request in step.lease_requests:
            self._tasks.add(task := asyncio.ensure_future(self._lease(request)))
            task.add_done_callback(self._tasks.discard)
        leases = self.core.safety.leases
        for lease in step.releases:
            self._tasks.add(task := asyncio.ensure_future(asyncio.to_thread(leases.release,
                                                                            lease)))
            task.add_done_callback(self._tasks.discard)

    async def _lease(self, request: LeaseRequest) -> None:
        """A blocking provider's call in a worker thread; its answer back into the core."""
        leases = self.core.safety.leases
        try:
            answer: Lease | Refusal = await asyncio.to_thread(
                leases.acquire, request.holder, request.action, request.ttl_s, self.clock())
        except Exception as exc:  # a client bug must not leave the decision pending forever
            log.exception("mapek: lease request for incident %d failed", request.incident)
            answer = Refusal("no_quorum", f"client error: {type(exc).__name__}")
        self.settle(self.core.leased(request.incident, answer, self.clock()))

    def carry(self, op: Op) -> None:
        """An executor op onto the cores' inputs (the only place the loop acts)."""
        a, apply = op.action, op.op == "apply"
        sensor, topology = self.view.sensor, self.view.topology
        if a.kind == ActionKind.QUARANTINE_LINK:
            if sensor.set_penalty(a.target.name, a.params["extra_cost"] if apply else 0.0):
                self.originate()
        elif a.kind == ActionKind.LENGTHEN_HELLO:
            self.view.stretch.set_floor(a.params["floor_s"] if apply else 0.0)
        elif a.kind == ActionKind.RESYNC_LSDB:
            if apply:
                hops = [(nb.ifname, nb.link_address) for nb in sensor.up_neighbors()
                        if nb.name == a.target.name]
                self.send(topology.neighbor_up(hops, self.clock()))
        else:  # a descriptor the shell has no executor for (disruptive: needs a lease)
            log.warning("mapek: no executor for %s; not carried out", a.kind)
            return
        log.info("mapek: %s %s on %s%s", op.op, a.kind, a.target,
                 f" ({op.reason})" if op.reason else "")
        self.events.append(EventKind.REMEDIATION, str(a.target), f"{op.op}:{a.kind}",
                           {**a.as_dict(), "reason": op.reason})

    def close(self) -> None:
        self.knowledge.close()
