"""The topology core: the link-state database plus the rules that move adverts.

Sans-I/O, like :class:`~mesh_agent.topology.lsdb.LinkStateDB` under it: each
method takes what arrived (bytes, the interface and source address, our
monotonic clock, the up neighbours as ``(interface, link address)`` hops)
and returns what to send. The rules, each tested in ``test_topology_core.py``:

- **Flooding** (RFC 2328 s13.3): an accepted advert goes to every up
  neighbour but the one it came from; a rejected one goes nowhere, except our
  newer copy back to a sender that holds an older one (s13 step 8).
- **Database exchange** (s10.6, much simplified): a neighbour that comes up
  gets every stored advert at once, rather than at the next refresh.
- **Origination**: our advert is signed on every change of our links and at
  least every ``refresh_s`` (the periodic refresh only ages out vanished
  nodes: every change is flooded at once); a sequence wrap's flush goes out
  before the advert that restarts the numbering.
- **Back-link detection**: for an accepted advert that changed the topology,
  whether it lists us (``lists_us``, from the LSDB's result): a neighbour
  whose fresh advert dropped us has lost the link. On a silent cut the far
  end often times out first, and its advert reaches us around the mesh
  before our own timer fires (the failover policy decides what to do).
- **Removed links**: an accepted advert that no longer lists a neighbour it
  listed before took that link out of the graph; the shell detours the
  destinations whose primary crossed it (``PathTable.detours``) before the
  full recompute.
- **Topology change**: a computed graph differs from the last one in its
  nodes, edges or costs (counted, for ``meshcore_topology_changes_total``), and
  per edge, how many of those changes added, removed or re-costed it
  (``edge_changes``, bounded): the MAPE-K loop reads route churn that one noisy
  link explains apart from churn spread over the mesh.
- **Who sent what was refused**: each refusal worth recording is also counted
  per sending hop (``rejected_from``): the hop is where the datagram came
  from, which a sender cannot forge on a link, unlike the origin it claims.
  The MAPE-K loop reads it per neighbour (an advert storm's suspect).
- **Isolation**: adverts from an isolated hop are dropped before any check
  until the isolation's end (:meth:`TopologyCore.isolate`, the loop's
  ``isolate_origin``), counted in ``isolated_total`` and per hop
  (``isolated_from``: the loop keeps an isolation while its storm goes on),
  not as refusals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import networkx as nx

from mesh_agent.topology.lsdb import MAX_SOURCES, LinkStateDB, Result

Hop = tuple[str, str]  # (interface, link address) of an up neighbour
# Not accepted, and nothing wrong: a copy we hold, or our own broadcast heard back.
# Dropped unread from an isolated hop: counted in isolated_total, not recorded one by one.
QUIET_REASONS = frozenset({"duplicate", "self", "isolated"})
# Refusals that are ordinary flooding, not a sender's fault: an older copy arriving after
# the newer one. Not counted per hop (the advert-storm signal leaves them out too).
ORDINARY_REASONS = frozenset({"stale"})
# The refusals rejected_from counts: neither quiet nor ordinary flooding.
NOT_PER_HOP = QUIET_REASONS | ORDINARY_REASONS
# rejected_from keeps at most this many hops; refusals from any further hop are counted
# under OTHER_HOP (a flood from forged link addresses cannot grow it without bound).
OTHER_HOP: Hop = ("", "")
# edge_changes keeps at most this many edges: past it, the edges no longer in the graph
# are forgotten, and while it is still full a new edge is not counted.
EDGE_CHANGES_MAX = 4096


def _count(counts: dict[Hop, int], hop: Hop) -> None:
    """One more for *hop*, or for OTHER_HOP once MAX_SOURCES hops are counted."""
    key = hop if hop in counts or len(counts) < MAX_SOURCES else OTHER_HOP
    counts[key] = counts.get(key, 0) + 1


@dataclass(frozen=True)
class Send:
    ifname: str
    dest: str
    data: bytes


@dataclass(frozen=True)
class Received:
    """What one advert did: the LSDB's verdict and what follows from it."""

    result: Result
    sends: tuple[Send, ...] = ()
    changed: bool = False  # the graph may have changed: the paths are due
    # When it changed the topology: whether the origin's advert lists us.
    lists_us: bool | None = None
    # The links (origin, neighbour) it took out of the graph: remote detours.
    removed: tuple[tuple[str, str], ...] = ()

    @property
    def rejected(self) -> bool:
        """Refused for a reason worth recording (not a copy we already hold, not our own)."""
        return not self.result.accepted and self.result.reason not in QUIET_REASONS


class TopologyCore:
    def __init__(self, lsdb: LinkStateDB, refresh_s: float) -> None:
        self.lsdb = lsdb
        self.refresh_s = refresh_s
        self.originated_total = 0
        self.looped_back_total = 0
        # Refusals per sending hop (module docstring), and the isolated hops (until when)
        # with what each sent while isolated (both bounded as rejected_from is).
        self.rejected_from: dict[Hop, int] = {}
        self.isolated: dict[Hop, float] = {}
        self.isolated_from: dict[Hop, int] = {}
        self.isolated_total = 0
        self.changes_total = 0
        # Per edge ("a~b", the names sorted), the topology changes that added, removed or
        # re-costed it (module docstring)
        self.edge_changes: dict[str, int] = {}
        self.nodes = 0  # of the last graph computed
        self.edges = 0
        self._last_originated = -float("inf")
        self._shape: tuple[frozenset[str], frozenset[tuple[frozenset[str], float]]] | None = None

    # -- adverts ----------------------------------------------------------
    def received(
        self,
        ifname: str,
        src: str,
        data: bytes,
        now: float,
        ttl: int | None,
        flood_to: Iterable[Hop],
    ) -> Received:
        """One datagram from the advert port of ``ifname``, sent by ``src``.

        ``flood_to``: where the link backend floods an advert that came from
        ``src`` (native: every up neighbour; batman-adv: nowhere, every node
        heard the broadcast); the sender itself is never among them.
        """
        if src == self.lsdb.node_address:  # our own broadcast, looped back by the kernel
            self.looped_back_total += 1
            return Received(Result(False, "self", None))
        hop = (ifname, src)
        until = self.isolated.get(hop)
        if until is not None:
            if now < until:
                self.isolated_total += 1
                _count(self.isolated_from, hop)
                return Received(Result(False, "isolated", None))
            del self.isolated[hop]
        result = self.lsdb.receive(data, now, f"{ifname}/{src}", ttl)
        if not result.accepted:
            if result.reason not in NOT_PER_HOP:
                _count(self.rejected_from, hop)
            back = (Send(ifname, src, result.reply),) if result.reply is not None else ()
            return Received(result, back)
        sends = tuple(Send(i, a, data) for i, a in flood_to if (i, a) != (ifname, src))
        changed = result.topology_changed
        removed = tuple((str(result.origin), n) for n in result.removed) if changed else ()
        return Received(result, sends, changed, result.lists_us if changed else None, removed)

    def solicited(self, solicits: Iterable[tuple[str, str]], now: float) -> list[Send]:
        """Our advert (it carries our certificate) to each ``(interface, link address)``
        whose hellos we could not authenticate yet: then it can authenticate ours."""
        own = self.lsdb.own_advert(now)
        return [] if own is None else [Send(i, a, own) for i, a in solicits]

    def neighbor_up(self, exchange_with: Iterable[Hop], now: float) -> list[Send]:
        """Database exchange: the whole LSDB to a neighbour that just came up, at the
        hops its link backend names (native: the neighbour; batman-adv: none, it
        already hears every node's broadcast refreshes)."""
        hops = list(exchange_with)
        return [Send(i, a, raw) for raw in (self.lsdb.raw_adverts(now) if hops else ())
                for i, a in hops]

    def isolate(self, hops: Iterable[Hop], until: float) -> None:
        """Drop every advert from *hops* unread until *until* (our monotonic clock)."""
        for hop in hops:
            self.isolated[hop] = until

    def release(self, hops: Iterable[Hop]) -> None:
        """End the isolation of *hops* now."""
        for hop in hops:
            self.isolated.pop(hop, None)

    # -- origination ------------------------------------------------------
    def originate(
        self, links: Mapping[str, float], now: float, flood_to: Iterable[Hop] = ()
    ) -> tuple[list[Send], bool]:
        """Sign our advert of ``links``: (what to send to ``flood_to``, our links changed)."""
        raw, changed = self.lsdb.originate(dict(links), now)
        self._last_originated = now
        self.originated_total += 1
        hops = list(flood_to)
        sends = [Send(i, a, out) for out in [*self.lsdb.flushes(now), raw] for i, a in hops]
        return sends, changed

    def refresh_due(self, now: float) -> bool:
        return now - self._last_originated >= self.refresh_s

    def expire(self, now: float) -> list[str]:
        """Origins whose adverts aged out (they stopped refreshing)."""
        return self.lsdb.expire(now)

    # -- the graph --------------------------------------------------------
    def graph(self) -> nx.Graph:
        """The graph for a path computation; notes whether it differs from the last one."""
        g = self.lsdb.graph()
        shape = (
            frozenset(g.nodes),
            frozenset((frozenset((a, b)), c) for a, b, c in g.edges(data="cost")),
        )
        if shape != self._shape:
            if self._shape is not None:
                self._count_edges(self._shape[1] ^ shape[1], shape[1])
            self._shape = shape
            self.changes_total += 1
        self.nodes, self.edges = g.number_of_nodes(), g.number_of_edges()
        return g

    def _count_edges(self, changed: frozenset[tuple[frozenset[str], float]],
                     now: frozenset[tuple[frozenset[str], float]]) -> None:
        """One more change for each edge in *changed* (edge, cost) pairs: added, removed
        or re-costed (both its old and new pair are there, counted once)."""
        keys = {"~".join(sorted(edge)) for edge, _ in changed}
        for key in sorted(keys):
            if key not in self.edge_changes and len(self.edge_changes) >= EDGE_CHANGES_MAX:
                present = {"~".join(sorted(edge)) for edge, _ in now}
                self.edge_changes = {k: n for k, n in self.edge_changes.items() if k in present}
                if len(self.edge_changes) >= EDGE_CHANGES_MAX:
                    continue
            self.edge_changes[key] = self.edge_changes.get(key, 0) + 1
