"""What the agent keeps in ``state_dir`` across restarts: one SQLite database.

- :mod:`.db`      opening it crash-safely, and per-component schema migrations;
- :mod:`.events`  the event log (``/v1/events``, ``meshctl events``, self-healing history).
"""

from mesh_agent.store.events import Event, EventKind, EventLog, Throttle

__all__ = ["Event", "EventKind", "EventLog", "Throttle"]
