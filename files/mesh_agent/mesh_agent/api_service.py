"""The HTTP API's life in the shell: built off the loop when :class:`.startup.ApiPacing`
says so, served until the agent stops, its sockets closed whatever happens.

The build (FastAPI's import and the app) runs in a thread so the loop keeps its
hello cadence. If the agent stops while the build is still running, the sockets
the build bound are closed as soon as it returns, not left open until the
process exits.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from mesh_agent.startup import ApiPacing

log = logging.getLogger("mesh_agent")

# What builds the server: (uvicorn-like server with .serve(sockets=) and .should_exit,
# the listening sockets it serves).
Build = Callable[[], tuple[Any, list[socket.socket]]]


class ApiService:
    def __init__(self, build: Build, clock: Callable[[], float], enabled: bool = True) -> None:
        self.build, self.clock, self.enabled = build, clock, enabled
        self.pacing = ApiPacing(clock())
        self.server: Any = None
        self.sockets: list[socket.socket] = []
        self.stopping = False
        self.task: asyncio.Task[None] | None = None

    def poll(self, now: float, ready: bool, topology_changes: int) -> asyncio.Task[None] | None:
        """From the shell's housekeeping: the serving task, the first time the API is due."""
        if (not self.enabled or self.stopping or self.task is not None
                or not self.pacing.due(now, ready, topology_changes)):
            return None
        self.task = asyncio.get_running_loop().create_task(self._serve(), name="api")
        return self.task

    async def _serve(self) -> None:
        server, sockets = await asyncio.to_thread(self.build)
        self.server, self.sockets = server, sockets
        if self.stopping:  # stopped while building: nothing to serve, close now
            self.close()
            return
        log.info("API up %.1f s after the start", self.clock() - self.pacing.started)
        await server.serve(sockets=sockets)

    def stop(self) -> None:
        """Ask the server to drain (it ends its own task); no new build starts."""
        self.stopping = True
        if self.server is not None:
            self.server.should_exit = True

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []
