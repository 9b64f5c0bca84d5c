"""When to switch a neighbour's destinations to their prepared backups (sans-I/O policy).

The switch itself is :meth:`RouteProgrammer.switch_now` on the paths'
:meth:`PathTable.failover` moves; this decides *when*, and keeps the record:

- a neighbour that went down fails over at once, unless it is still reachable
  over another interface (then the recompute moves what needs moving);
- a neighbour whose fresh advert no longer lists us fails over at once too,
  before our own timer fires (back-link detection,
  :class:`~mesh_agent.topology.core.TopologyCore`), once per episode: not again
  until it lists us again or its link changes state;
- each completed failover is counted, its duration observed
  (``meshcore_failover_duration_seconds``) and kept as the last one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mesh_agent.counters import Histogram
from mesh_agent.link.sensor import Event, NeighborDown

# Failover is sub-millisecond when nothing goes wrong; the top buckets catch a
# netlink socket stalled behind a large sync.
FAILOVER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class FailoverPolicy:
    def __init__(self) -> None:
        self._advert_down: set[str] = set()  # failed over because their advert dropped us
        self.failovers_total = 0
        self.duration = Histogram(FAILOVER_BUCKETS)
        self.last: dict[str, Any] | None = None

    def neighbor_events(self, events: Iterable[Event], linked: Iterable[str]) -> list[NeighborDown]:
        """The neighbours of these link events to fail over now (``linked``: still up somewhere)."""
        still = set(linked)
        events = list(events)
        due = [ev for ev in events if isinstance(ev, NeighborDown) and ev.name not in still]
        for ev in events:  # a link that changed state starts a new episode
            self._advert_down.discard(ev.name)
        return due

    def advert(self, origin: str, lists_us: bool, linked: bool, routed_through: bool) -> bool:
        """A neighbour's advert changed the topology: fail over to the backups now?

        ``linked``: it is up on some interface here; ``routed_through``: some
        destination's primary path goes through it (else the recompute is enough).
        """
        if lists_us:
            self._advert_down.discard(origin)  # back again: the next drop is a new failure
            return False
        if not linked or origin in self._advert_down or not routed_through:
            return False
        self._advert_down.add(origin)
        return True

    def completed(self, record: dict[str, Any]) -> None:
        """A failover finished: ``record`` has at least ``duration_seconds``."""
        self.failovers_total += 1
        self.duration.observe(float(record["duration_seconds"]))
        self.last = record
