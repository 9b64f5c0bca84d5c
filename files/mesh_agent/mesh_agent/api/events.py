"""``GET /v1/events``: the node's event log, read with a cursor.

    GET /v1/events                       the newest 100 events, oldest first
    GET /v1/events?after=ID              the events after ID (at most ``limit``)
    GET /v1/events?kind=link_down&kind=failover&subject=n3&limit=20
    GET /v1/events?after=0&since=1796290000  from that wall-clock time on, oldest first

The response::

    {"node": "n1",
     "events": [{"id": 41, "wall": ..., "mono": ..., "boot": "...", "kind": "failover",
                 "subject": "n3", "reason": "carrier", "detail": {...}}, ...],
     "oldest_id": 1, "newest_id": 42,
     "next": 42,          # pass as ?after= to continue (also when no event matched)
     "gap": false}        # true: events after ``after`` were pruned before being read

A follower (``meshctl events --follow``) polls with ``after=<next>``; ``gap``
tells it that the log's bound dropped records it never saw. The handler is a
plain function, so Starlette runs it on its thread pool and a slow disk never
blocks the agent's event loop.
"""

from __future__ import annotations

from typing import Any, Protocol

from mesh_agent.api.routing import Endpoint, Param
from mesh_agent.store.events import MAX_TEXT, Event, EventKind

MAX_LIMIT = 1000


class EventReader(Protocol):
    """What the endpoint needs of the event log (read-only)."""

    def query(
        self,
        *,
        after: int | None = ...,
        kinds: list[str] = ...,
        subject: str | None = ...,
        since: float | None = ...,
        limit: int = ...,
    ) -> list[Event]: ...

    def bounds(self) -> tuple[int, int]: ...


def events_endpoint(node: str, log: EventReader) -> Endpoint:
    def events(
        after: int | None, kind: list[str] | None, subject: str | None, since: float | None,
        limit: int,
    ) -> dict[str, Any]:
        """The node's event log, oldest first, read with a cursor (``after``, ``next``)."""
        oldest, newest = log.bounds()  # before the query: every match up to newest is in it
        found = log.query(after=after, kinds=list(kind or []), subject=subject,
                          since=since, limit=limit)
        if len(found) == limit:
            next_after = found[-1].id
        else:  # nothing else matched up to newest (or later, if an append raced us)
            next_after = max(after or 0, newest, found[-1].id if found else 0)
        return {
            "node": node,
            "events": [e.as_dict() for e in found],
            "oldest_id": oldest,
            "newest_id": newest,
            "next": next_after,
            "gap": after is not None and oldest > after + 1,
        }

    return Endpoint("/v1/events", events, (
        Param("after", int, ge=0, description="Only events after this id (a cursor)"),
        Param("kind", choices=tuple(k.value for k in EventKind), many=True,
              description="Only these kinds (repeatable)"),
        Param("subject", max_length=MAX_TEXT, description="Only events about this subject"),
        Param("since", float, ge=0, description="Only events from this wall-clock time on"),
        Param("limit", int, default=100, ge=1, le=MAX_LIMIT, description="At most this many"),
    ))
