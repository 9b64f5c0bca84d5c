"""Start-up pacing: when the agent builds its HTTP API (sans-I/O).

Importing FastAPI and building the app costs about 0.5-1 s of CPU per agent on
an x86 core (several times that on a Pi), more than the routing itself needs to
converge. When a whole mesh starts at once (a power cut, a lab, a bench) every
agent paid it before its first hello, so on a 72-node mesh on 2 cores the
imports alone kept every pair from being routed for tens of seconds. The API
serves health, metrics and views; routing needs none of it. So the API comes
second: once this node's routing has settled (ready, and no topology change for
:data:`API_QUIET_S`), and in any case :data:`API_LATEST_S` after the start, so
an isolated node still answers its health checks.
"""

from __future__ import annotations

API_QUIET_S = 2.0
API_LATEST_S = 15.0


class ApiPacing:
    def __init__(self, started: float, quiet_s: float = API_QUIET_S,
                 latest_s: float = API_LATEST_S) -> None:
        self.started = started
        self.quiet_s = quiet_s
        self.latest_s = latest_s
        self._changes: int | None = None
        self._changed_at = started
        self.due_at: float | None = None  # when the API was found due (once)

    def due(self, now: float, ready: bool, topology_changes: int) -> bool:
        """Whether to build the API now. ``ready``: the agent's readiness (routes
        programmed for its current paths); ``topology_changes``: a counter that moves
        with every change of the graph (``TopologyCore.changes_total``)."""
        if self.due_at is not None:
            return True
        if topology_changes != self._changes:
            self._changes, self._changed_at = topology_changes, now
        settled = ready and now - self._changed_at >= self.quiet_s
        if settled or now - self.started >= self.latest_s:
            self.due_at = now
            return True
        return False
