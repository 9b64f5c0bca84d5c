"""The MAPE-K loop inside the agent: its timer and the one place its ops become inputs of
the other cores. The decisions stay in :class:`.loop.MapeK`; this only moves data.

Built from what :class:`.knowledge.Knowledge` kept (action statistics, thresholds, the last
incident id), ticked every ``mapek.interval_s``, and every op is carried onto a core's
input: link quarantine onto :meth:`LinkSensor.set_penalty` (then an advert floods the new
cost), a flapping link's hold-down onto :meth:`LinkSensor.set_hold`, a longer hello
onto :meth:`HelloStretch.set_floor`, an LSDB resync onto
:meth:`TopologyCore.neighbor_up` toward that neighbour. A blocking lease provider (etcd)
is called here in a worker thread, never on the event loop: the core asks in its step
(``lease_requests``) and gets the answer through :meth:`MapeK.leased`.

Disruptive actions run under their lease. ``restart_unit`` (a starved node): off the
event loop, the lease is validated (still ours, its fencing token current) just before
acting, the allowlisted service (``mapek.restart_units``) that used the most CPU since
the loop's last sample is restarted through systemd (:func:`.execute.busiest_unit`),
and only then is the lease handed back. ``isolate_origin`` (an advert storm from a
neighbour): the lease validated, and unless some node reaches us only through that
neighbour (:func:`cut_off_by`), every advert from its hops is dropped
unread (:meth:`TopologyCore.isolate`) until its lease's deadline, extended at each of
the lease's renewals (``Step.extends``) up to the action's own expiry, and the decision
is signed with the node's key and recorded (the remediation event carries it and its
signature); the undo (the neighbour stopped storming, its expiry, or its lease lost)
lifts it. Its lease is kept while it is in force: renewed in a worker thread
(``Step.renewals``, answered with :meth:`MapeK.renewed`), handed back when it ends.
``rerequest_identity`` (our certificate not rotated in time: ``stale_identity``): the
lease validated, the identity asked of the SPIFFE Workload API again over a new stream
(:meth:`IdentityWatcher.rerequest`) and swapped in if it is new; offered to the policies
only where the identity comes from the Workload API (:meth:`MapekShell.follow_identity`):
files are renewed by whoever writes them.

A maintenance window (:mod:`.maintenance`) is read from ``<state_dir>/maintenance.json``
at every sample and handed to the core in the observation; its start, end and a file
that does not parse are recorded as ``maintenance`` events.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import subprocess
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import networkx as nx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from mesh_agent.config import AgentConfig
from mesh_agent.identity.export import client_pem
from mesh_agent.identity.watch import IdentityWatcher
from mesh_agent.link.sensor import Event
from mesh_agent.mapek import maintenance
from mesh_agent.mapek.execute import Op, busiest_unit
from mesh_agent.mapek.knowledge import Knowledge
from mesh_agent.mapek.lease import Refusal, neighbourhood
from mesh_agent.mapek.loop import START_SETTLE_S, LeaseRequest, MapeK, Step
from mesh_agent.mapek.monitor import Thresholds
from mesh_agent.mapek.plan import ActionKind, make_policy
from mesh_agent.mapek.safety import Lease, LeaseProvider, NoQuorum
from mesh_agent.store.events import EventKind, EventLog
from mesh_agent.timers import every
from mesh_agent.topology.core import Send
from mesh_agent.view import AgentView, cut_off_by

log = logging.getLogger("mesh_agent")

CGROUP_SERVICES = Path("/sys/fs/cgroup/system.slice")
PROC = Path("/proc")
MIN_CPU_WINDOW_S = 1.0
LOCAL_ACTIONS = frozenset({ActionKind.NONE, ActionKind.QUARANTINE_LINK,
                           ActionKind.LENGTHEN_HELLO, ActionKind.RESYNC_LSDB,
                           ActionKind.HOLD_DOWN_LINK})


def available_actions(cfg: AgentConfig, rerequest: bool = False) -> frozenset[ActionKind]:
    """What this node's shell can carry out: the local actions, ``restart_unit`` when
    services are allowlisted for it, and ``rerequest_identity`` when the identity comes
    from a source that can be asked again (*rerequest*)."""
    return LOCAL_ACTIONS | {ActionKind.ISOLATE_ORIGIN} | (
        {ActionKind.RESTART_UNIT} if cfg.mapek.restart_units else set()) | (
        {ActionKind.REREQUEST_IDENTITY} if rerequest else set())


def signed_decision(decision: Mapping[str, Any], sign: Callable[[bytes], bytes]
                    ) -> dict[str, Any]:
    """*decision* with its signature: ``sign`` over its canonical JSON (sorted keys, no
    spaces), base64. Anyone holding the node's certificate checks it with
    :func:`decision_verifies`."""
    body = json.dumps(dict(decision), sort_keys=True, separators=(",", ":")).encode()
    return {"decision": dict(decision), "signature": base64.b64encode(sign(body)).decode()}


def decision_verifies(signed: Mapping[str, Any], public_key: ec.EllipticCurvePublicKey
                      ) -> bool:
    """Whether a :func:`signed_decision` was signed by the holder of *public_key*."""
    body = json.dumps(signed["decision"], sort_keys=True, separators=(",", ":")).encode()
    try:
        public_key.verify(base64.b64decode(signed["signature"]), body,
                          ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def unit_cpu_seconds(units: Iterable[str], root: Path = CGROUP_SERVICES,
                     proc: Path = PROC) -> dict[str, float]:
    """CPU seconds each running unit has used: cgroup v2 ``cpu.stat`` ``usage_usec`` under
    *root* (every process the unit ever ran); where the unified hierarchy has no such file
    (cgroup v1, or a container whose controllers are read-only), the user and system time
    of the unit's live processes (:func:`proc_cpu_seconds`). A unit that is not running is
    left out."""
    out: dict[str, float] = {}
    rest = []
    for unit in units:
        try:
            for line in (root / unit / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    out[unit] = int(value) / 1e6
                    break
            else:
                rest.append(unit)
        except (OSError, ValueError):
            rest.append(unit)
    if rest:
        out.update(proc_cpu_seconds(rest, proc))
    return out


def proc_cpu_seconds(units: Iterable[str], proc: Path = PROC) -> dict[str, float]:
    """utime + stime of the live processes of each unit, found by the last part of their
    cgroup path (``/proc/PID/cgroup``, any hierarchy: systemd names a service's cgroup
    after the unit), from ``/proc/PID/stat``. A process that exited takes its time with
    it, so the sum can fall: :func:`.execute.busiest_unit` leaves a unit whose time fell
    out, as it does a restarted one."""
    wanted = set(units)
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[str, float] = {}
    try:
        pids = [d for d in proc.iterdir() if d.name.isdigit()]
    except OSError:
        return out
    for d in pids:
        try:
            unit = next((name for line in (d / "cgroup").read_text().splitlines()
                         if (name := line.rsplit("/", 1)[-1]) in wanted), None)
            if unit is None:
                continue
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            out[unit] = out.get(unit, 0.0) + (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError, IndexError):
            continue
    return out


def systemctl_restart(unit: str) -> str | None:
    """``systemctl restart --no-block UNIT``; None when systemd took the job, else why not."""
    try:
        res = subprocess.run(["systemctl", "restart", "--no-block", unit],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"systemctl: {exc}"
    return None if res.returncode == 0 else (res.stderr.strip() or f"rc {res.returncode}")


def lease_tls(cfg: AgentConfig) -> tuple[str, str, str]:
    """(CA, certificate, key) files for https lease endpoints: the etcd members' CA
    (``mapek.lease.ca``, else the mesh CA), and the node's own identity: the Workload
    API's SVID where the agent exports it (:mod:`mesh_agent.identity.export`: key and
    certificate in one file), else the identity files."""
    ca = str(cfg.mapek.lease.ca or cfg.identity.ca)
    exported = client_pem(cfg.state_dir)
    if exported.exists():
        return ca, str(exported), str(exported)
    return ca, str(cfg.identity.cert), str(cfg.identity.key)


def lease_provider(cfg: AgentConfig, graph: Callable[[], nx.Graph]) -> LeaseProvider:
    """etcd when ``mapek.lease.endpoints`` are configured (the gateways), else nothing is
    granted (:class:`NoQuorum`). The cap and the neighbourhood come from the LSDB's graph
    at each request; https endpoints get the node's own certificate (etcd requires one,
    :func:`lease_tls`)."""
    lease = cfg.mapek.lease
    if not lease.endpoints:
        return NoQuorum()
    # Imported only here: the client (etcd3gw, requests) adds 12 MiB of RSS to an
    # agent that has no lease service configured.
    from mesh_agent.mapek.etcd import EtcdLeases

    node = cfg.node_name
    return EtcdLeases(lease.endpoints, lambda: neighbourhood(graph(), node),
                      cap_pct=lease.cap_pct, timeout_s=lease.timeout_s, tls=lease_tls(cfg))


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
        link_events: Callable[[list[Event]], None],
        unit_cpu: Callable[[Iterable[str]], Mapping[str, float]] = unit_cpu_seconds,
        restart_unit: Callable[[str], str | None] = systemctl_restart,
    ) -> None:
        self.cfg, self.view, self.events, self.knowledge = cfg, view, events, knowledge
        self.clock, self.wall, self.cpu = clock, wall, cpu
        self.originate, self.send, self.link_events = originate, send, link_events
        self.unit_cpu, self.restart_unit = unit_cpu, restart_unit
        # The allowlisted units' CPU seconds at the last two ticks (restart_unit compares
        # with the newest at least MIN_CPU_WINDOW_S old: a lease answered at once leaves
        # too short a window after the deciding tick).
        self._unit_samples: deque[tuple[float, Mapping[str, float]]] = deque(maxlen=2)
        m = cfg.mapek
        knowledge.boot = knowledge.boot or events.boot
        knowledge.mode, knowledge.policy = m.mode, m.policy
        if abandoned := knowledge.start_run():
            log.info("mapek: %d incident(s) left open by the previous run abandoned", abandoned)
        thresholds, rebased = Thresholds.restore(knowledge.tuned())
        knowledge.defaults = thresholds.defaults
        for signal, value, reason in rebased:
            log.info("mapek: threshold %s %s: now %g", signal, reason, value)
        knowledge.record(Step(thresholds=rebased), wall())
        self.core = MapeK(cfg.node_name, m.mode, make_policy(m.policy), cfg.hello_interval_s,
                          interval_s=m.interval_s,
                          thresholds=thresholds,
                          stats=knowledge.stats(), next_id=knowledge.last_id() + 1,
                          settle_s=START_SETTLE_S, leases=lease_provider(cfg, view.graph),
                          lease_ttl_s=m.lease.ttl_s, available=available_actions(cfg),
                          loss_min_hellos=m.loss_min_hellos)
        view.mapek, view.knowledge = self.core, knowledge
        self._tasks: set[asyncio.Future[None]] = set()  # lease calls under way
        self._isolated: dict[int, list[tuple[str, str]]] = {}  # action id: hops isolated
        self._wake: asyncio.TimerHandle | None = None  # the wake-up for what is due (MapeK.due)
        self._wake_at = 0.0
        self._identity: IdentityWatcher | None = None
        # The last unreadable window file's complaint (recorded once); the window open at
        # the last sample is the view's (AgentView.maintenance).
        self._window_error = ""

    def follow_identity(self, watcher: IdentityWatcher) -> None:
        """The agent follows its identity's rotations with *watcher*: ``rerequest_identity``
        becomes one of the actions here when its source can be asked again."""
        self._identity = watcher
        self.core.available = available_actions(self.cfg, watcher.can_rerequest)

    async def run(self) -> None:
        interval = self.cfg.mapek.interval_s
        await asyncio.sleep(interval)
        await every(self.clock, interval, self._sampled_tick)

    async def _sampled_tick(self) -> None:
        """The timer's tick: the allowlisted units' CPU is read in a worker thread (a
        /proc scan on cgroup v1), the step itself on the loop."""
        units = self.cfg.mapek.restart_units
        self.tick(await asyncio.to_thread(self.unit_cpu, units) if units else None)

    def tick(self, unit_cpu: Mapping[str, float] | None = None) -> None:
        """One MAPE-K step: observe the view, record what changed, carry out the ops.
        *unit_cpu*: the allowlisted units' CPU seconds, read now (None: read them here)."""
        if units := self.cfg.mapek.restart_units:
            self._unit_samples.append((self.clock(), unit_cpu if unit_cpu is not None
                                       else self.unit_cpu(units)))
        wall = self.wall()
        obs = self.view.observation(self.cpu(), wall)
        window = self.read_window(wall)
        if window is not None:
            obs = replace(obs, maintenance_until=obs.at + (window.until - wall))
        self.settle(self.core.step(obs))

    def read_window(self, wall: float) -> maintenance.Window | None:
        """The maintenance window open at *wall* (None: none), read from the state
        directory; its start and end, and a file that does not parse (no window then: a
        broken file never silences the loop), are recorded as events."""
        try:
            found = maintenance.read(self.cfg.state_dir)
            self._window_error = ""
        except maintenance.WindowError as exc:
            found = None
            if str(exc) != self._window_error:
                self._window_error = str(exc)
                log.warning("mapek: no maintenance window: %s", exc)
                self.events.append(EventKind.MAINTENANCE, self.cfg.node_name, "invalid",
                                   {"why": str(exc)})
        now = found if found is not None and found.open_at(wall) else None
        before, self.view.maintenance = self.view.maintenance, now
        if now is not None and now != before:
            log.info("mapek: maintenance window open until %.0f (%s): incidents are "
                     "recorded, not acted on", now.until, now.reason or "no reason given")
            self.events.append(EventKind.MAINTENANCE, self.cfg.node_name, "open", now.as_dict())
        elif now is None and before is not None:
            why = "closed" if found is None or found != before else "ended"
            log.info("mapek: maintenance window %s", why)
            self.events.append(EventKind.MAINTENANCE, self.cfg.node_name, why, before.as_dict())
        return now

    def _spawn(self, coro: Any) -> None:
        self._tasks.add(task := asyncio.ensure_future(coro))
        task.add_done_callback(self._tasks.discard)

    def settle(self, step: Step) -> None:
        """Record a step, carry out its ops, and start its lease calls off the event loop.
        A disruptive op runs off the loop too, and keeps its lease until it is done."""
        self.knowledge.record(step, self.wall())
        for charge in step.charges:  # what an action was blamed for, and why (MapeK._collateral)
            self.events.append(EventKind.REMEDIATION, self.cfg.node_name,
                               f"charge:{charge.action}", charge.as_dict())
        releases = {lease.token: lease for lease in step.releases}
        holds = {lease.token: lease for lease in step.holds}
        for op in step.ops:
            if op.action.disruptive and op.op == "apply":
                token = op.action.lease_token
                lease = releases.pop(token) if token is not None and token in releases else None
                held = holds.get(token) if token is not None else None
                self._spawn(self._disrupt(op, lease, held))
            else:
                self.carry(op)
        for request in step.lease_requests:
            self._spawn(self._lease(request))
        leases = self.core.safety.leases
        for lease in releases.values():
            self._spawn(asyncio.to_thread(leases.release, lease))
        for lease in step.renewals:
            self._spawn(self._renew(lease))
        for action, until in step.extends:
            if action.kind == ActionKind.ISOLATE_ORIGIN and action.id in self._isolated:
                self.view.topology.isolate(self._isolated[action.id], until)
        self._wake_when_due()

    def _wake_when_due(self) -> None:
        """Something is due between two samples (a refused decision's retry, a held
        lease's renewal or deadline): wake the loop then."""
        at = self.core.next_due_at
        if at is None or (self._wake is not None and self._wake_at <= at):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # stepped by hand (tests): the samples do it
            return
        if self._wake is not None:
            self._wake.cancel()
        self._wake_at = at
        self._wake = loop.call_later(max(0.0, at - self.clock()), self._due)

    def _due(self) -> None:
        self._wake = None
        self.settle(self.core.due(self.clock()))

    async def _renew(self, lease: Lease) -> None:
        """A held lease's renewal in a worker thread; its answer back into the core."""
        leases = self.core.safety.leases
        try:
            answer = await asyncio.to_thread(leases.renew, lease, self.core.safety.lease_ttl_s,
                                             self.clock())
        except Exception:  # a client bug: not renewed, asked again until its deadline
            log.exception("mapek: renewing lease %d failed", lease.token)
            answer = lease
        self.settle(self.core.renewed(lease.token, answer, self.clock()))

    async def _disrupt(self, op: Op, lease: Lease | None, held: Lease | None = None) -> None:
        """A disruptive action: validate its lease, act, record, then hand the lease back
        (all blocking calls in worker threads). *held*: the lease of an action that lasts,
        validated but kept to its TTL."""
        a, leases = op.action, self.core.safety.leases
        check = lease if lease is not None else held
        try:
            if check is not None and not await asyncio.to_thread(leases.validate, check,
                                                                 self.clock()):
                self._record(op, "refused", "the lease is no longer ours (expired or "
                             "taken over): nothing done", {})
                if held is not None:
                    self.core.executor.forget(a)
                return
            if a.kind == ActionKind.RESTART_UNIT:
                await self._restart_busiest(op)
            elif a.kind == ActionKind.ISOLATE_ORIGIN:
                self._isolate(op, held)
            elif a.kind == ActionKind.REREQUEST_IDENTITY and self._identity is not None:
                self._record(op, *await self._identity.rerequest())
            else:
                self._record(op, "refused", f"no executor for {a.kind}", {})
        except Exception:  # an executor bug must not kill the loop's task set silently
            log.exception("mapek: %s for incident %d failed", a.kind, a.incident_id)
        finally:
            if lease is not None:
                await asyncio.to_thread(leases.release, lease)

    async def _restart_busiest(self, op: Op) -> None:
        units = self.cfg.mapek.restart_units
        now, after = self.clock(), await asyncio.to_thread(self.unit_cpu, units)
        old_enough = [s for s in self._unit_samples if now - s[0] >= MIN_CPU_WINDOW_S]
        before = old_enough[-1] if old_enough else (
            self._unit_samples[0] if self._unit_samples else None)
        unit, why = (busiest_unit(before[1], after, now - before[0]) if before is not None
                     else (None, "no CPU sample to compare with yet"))
        if unit is None:
            self._record(op, "noop", f"nothing restarted: {why}", {"units": list(units)})
            return
        error = await asyncio.to_thread(self.restart_unit, unit)
        if error is not None:
            self._record(op, "failed", f"restarting {unit} failed: {error}", {"unit": unit})
            return
        self._record(op, "done", f"restarted {unit}: {why}", {"unit": unit})

    def _isolate(self, op: Op, held: Lease | None) -> None:
        """Drop the neighbour's adverts unread until the *held* lease's deadline (each
        renewal extends it) or the action's expiry; sign and record the decision (on the
        event loop: the topology core is its state)."""
        a = op.action
        hops = self.view.neighbor_hops(a.target.name)
        if not hops:
            self.core.executor.forget(a)
            self._record(op, "noop", f"{a.target.name} is no neighbour (any more): nothing "
                         "isolated", {})
            return
        if cut := cut_off_by(self.view.graph(), self.cfg.node_name, a.target.name):
            self.core.executor.forget(a)
            self._record(op, "refused", f"{len(cut)} node(s) reach us only through "
                         f"{a.target.name} ({', '.join(sorted(cut)[:5])}): their adverts "
                         "would go stale here, nothing isolated", {"cut_off": sorted(cut)})
            return
        self.view.topology.isolate(hops, min(a.expires_at, held.expires_at)
                                   if held is not None else a.expires_at)
        self._isolated[a.id] = hops
        left_s = max(0.0, a.expires_at - self.clock())
        wall = self.wall()
        decision = {"node": self.cfg.node_name, "action": str(a.kind),
                    "neighbour": a.target.name, "hops": [list(h) for h in hops],
                    "incident": a.incident_id, "lease_token": a.lease_token,
                    "issued": round(wall, 3), "expires": round(wall + left_s, 3)}
        signed = signed_decision(decision, self.view.topology.lsdb.identity.sign)
        self._record(op, "done", f"adverts from {a.target.name} dropped for {left_s:.0f} s",
                     signed)

    def _record(self, op: Op, result: str, why: str, detail: dict[str, Any]) -> None:
        a = op.action
        (log.warning if result in ("refused", "failed") else log.info)(
            "mapek: %s on %s (incident %d): %s", a.kind, a.target, a.incident_id, why)
        self.events.append(EventKind.REMEDIATION, str(a.target), f"{op.op}:{a.kind}",
                           {**a.as_dict(), **detail, "result": result, "why": why})

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
        elif a.kind == ActionKind.HOLD_DOWN_LINK:
            # Its sessions end now: the agent's handling of a neighbour down (failover,
            # re-origination), as for any other.
            self.link_events(sensor.set_hold(a.target.name, a.params["until"] if apply else 0.0,
                                             self.clock()))
        elif a.kind == ActionKind.RESYNC_LSDB:
            if apply:
                hops = [(nb.ifname, nb.link_address) for nb in sensor.up_neighbors()
                        if nb.name == a.target.name]
                self.send(topology.neighbor_up(hops, self.clock()))
        elif a.kind == ActionKind.ISOLATE_ORIGIN and not apply:
            topology.release([*self._isolated.pop(a.id, []),
                              *self.view.neighbor_hops(a.target.name)])
        else:  # disruptive actions run in _disrupt, under their lease
            log.warning("mapek: %s is not carried out here", a.kind)
            return
        log.info("mapek: %s %s on %s%s", op.op, a.kind, a.target,
                 f" ({op.reason})" if op.reason else "")
        self.events.append(EventKind.REMEDIATION, str(a.target), f"{op.op}:{a.kind}",
                           {**a.as_dict(), "reason": op.reason})

    def close(self) -> None:
        """At the agent's stop: the leases of actions in force are handed back, so a
        stopped agent does not keep its neighbourhood's slot until their TTL (best effort:
        the TTL frees them anyway; a call blocks the stop at most the client's timeout
        per endpoint)."""
        if self._wake is not None:
            self._wake.cancel()
        leases = self.core.safety.leases
        for lease in self.core.stop():
            try:
                leases.release(lease)
            except Exception:  # the stop goes on; the TTL frees it
                log.warning("mapek: lease %d not handed back at the stop", lease.token)
        self.knowledge.close()
