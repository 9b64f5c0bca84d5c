"""What the agent keeps in ``state_dir`` (``/var/lib/mesh-agent``) across restarts.

- :mod:`.seq`     our advert sequence-number reservation (``advert-seq.json``: written
                  ahead of signing, fsynced, atomically replaced);
- :mod:`.db`      the SQLite database (``agent.db``): opened crash-safely, per-component
                  schema migrations;
- :mod:`.events`  the event log in it (``/v1/events``, ``meshctl events``, the
                  self-healing loop's history).
"""

from mesh_agent.store.events import Event, EventKind, EventLog, Throttle
from mesh_agent.store.seq import FileSeqStore

__all__ = ["Event", "EventKind", "EventLog", "FileSeqStore", "Throttle"]
