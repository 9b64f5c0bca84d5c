"""The API's HTTP server: uvicorn on pre-bound sockets, with a bound on connections.

uvicorn (h11) never closes a connection that has not sent a request yet, and
accepts as many as the file-descriptor limit allows: 1,100 idle connections to
an agent exhausted its descriptors. So the protocol used here

* keeps at most :data:`MAX_CONNECTIONS`: a new connection beyond them closes the
  oldest one that has not sent a request yet (so a scrape still gets through an
  idle-connection flood), or, when all are busy with requests, is closed itself;
* closes a connection whose request head has not arrived within :data:`IDLE_TIMEOUT_S`;

after a response uvicorn's own keep-alive timeout (the same seconds) applies.
Requests in flight are bounded by the connections (uvicorn's
``limit_concurrency`` only backs that up: it counts idle connections too, and
would answer 503 to the one real request among them). Each listening
socket is bound by us with IP_FREEBIND, so a management address that comes up
after the agent does not stop the API from starting. Refusals are counted in
``meshcore_api_connections_refused_total{reason}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_CONNECTIONS = 64
IDLE_TIMEOUT_S = 5.0
BACKLOG = 128
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = 78


def _protocol(refused: Callable[[str], None]) -> type[asyncio.Protocol]:
    # Connections that have not sent a request head yet, oldest first.
    waiting: OrderedDict[int, GuardedH11Protocol] = OrderedDict()

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > MAX_CONNECTIONS:
                refused("limit")
                if not waiting:  # every slot is serving a request: this one goes
                    transport.abort()
                    return
                _, oldest = waiting.popitem(last=False)
                oldest.transport.abort()
            waiting[id(self)] = self
            self._deadline = self.loop.call_later(IDLE_TIMEOUT_S, self._idle)

        def _idle(self) -> None:
            self._deadline = None
            if self.cycle is None and not self.transport.is_closing():
                refused("idle")
                waiting.pop(id(self), None)
                self.transport.abort()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None:
                waiting.pop(id(self), None)
                if self._deadline is not None:
                    self._deadline.cancel()
                    self._deadline = None

        def connection_lost(self, exc: Exception | None) -> None:
            waiting.pop(id(self), None)
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().connection_lost(exc)

    return GuardedH11Protocol


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (IP_FREEBIND: the address may come later)."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        s.listen(BACKLOG)
    except OSError:
        s.close()
        raise
    s.setblocking(False)
    return s


MAIN_LOOP_S = 1.0


def guarded_server(
    app: Any, endpoints: list[tuple[str, int]], refused: Callable[[str], None]
) -> tuple[uvicorn.Server, list[socket.socket]]:
    """A uvicorn server for *app* and its listening sockets (pass them to ``serve``)."""
    config = uvicorn.Config(
        app,
        http=_protocol(refused),
        log_level="warning",
        lifespan="off",
        access_log=False,
        limit_concurrency=2 * MAX_CONNECTIONS,
        timeout_keep_alive=int(IDLE_TIMEOUT_S),
        backlog=BACKLOG,
    )

    class _Server(uvicorn.Server):
        # The agent owns SIGTERM/SIGINT; uvicorn must not grab them.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        async def main_loop(self) -> None:
            # uvicorn wakes every 0.1 s to see whether to stop and, each tenth time,
            # to refresh its Date header: at 50 ms hellos a third of an idle
            # agent's wake-ups (issue 16). Once a second does both; a stop then
            # waits up to a second for it (the agent's shutdown allows five).
            while not await self.on_tick(0):
                await asyncio.sleep(MAIN_LOOP_S)

    sockets = []
    try:
        for host, port in endpoints:
            sockets.append(listen_socket(host, port))
    except OSError:
        for s in sockets:
            s.close()
        raise
    return _Server(config), sockets
