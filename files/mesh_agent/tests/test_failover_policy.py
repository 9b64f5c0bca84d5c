"""When to fail over (mesh_agent.routes.failover), on its own."""

from __future__ import annotations

from mesh_agent.link.sensor import NeighborDown, NeighborUp
from mesh_agent.routes.failover import FAILOVER_BUCKETS, FailoverPolicy


def down(name: str, reason: str = "timeout") -> NeighborDown:
    return NeighborDown("mesh0", name, "10.78.0.1", reason, 1.0)


def test_a_neighbour_that_died_fails_over_unless_still_linked_elsewhere() -> None:
    p = FailoverPolicy()
    assert p.neighbor_events([down("b"), down("c")], linked=["c"]) == [down("b")]
    assert p.neighbor_events([NeighborUp("mesh0", "b", "10.78.0.1", "10.77.0.2", 1.0)],
                             linked=[]) == []


def test_an_advert_that_drops_us_fails_over_once_per_episode() -> None:
    p = FailoverPolicy()
    assert not p.advert("b", lists_us=False, linked=False, routed_through=True)  # not adjacent
    assert not p.advert("b", lists_us=False, linked=True, routed_through=False)  # nothing behind
    assert p.advert("b", lists_us=False, linked=True, routed_through=True)
    assert not p.advert("b", lists_us=False, linked=True, routed_through=True)  # same episode
    assert not p.advert("b", lists_us=True, linked=True, routed_through=True)  # back again
    assert p.advert("b", lists_us=False, linked=True, routed_through=True)  # a new failure
    p.neighbor_events([down("b", "advert")], linked=["b"])  # its link changed state
    assert p.advert("b", lists_us=False, linked=True, routed_through=True)


def test_completed_failovers_are_counted_with_their_duration() -> None:
    p = FailoverPolicy()
    p.completed({"neighbor": "b", "duration_seconds": 0.0003})
    p.completed({"neighbor": "c", "duration_seconds": 0.2})
    assert p.failovers_total == 2 and p.last == {"neighbor": "c", "duration_seconds": 0.2}
    buckets = dict(p.duration.cumulative())
    assert buckets[repr(0.0005)] == 1 and buckets["+Inf"] == 2
    assert p.duration.count == 2 and abs(p.duration.sum - 0.2003) < 1e-12
    assert len(buckets) == len(FAILOVER_BUCKETS) + 1
