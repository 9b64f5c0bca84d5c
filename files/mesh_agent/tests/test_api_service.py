"""ApiService: the API is built once, when due, and its sockets never outlive a stop."""

from __future__ import annotations

import asyncio
import socket
import threading

from mesh_agent.api_service import ApiService
from mesh_agent.startup import API_LATEST_S


class FakeServer:
    def __init__(self) -> None:
        self.should_exit = False
        self.served: list[socket.socket] | None = None

    async def serve(self, sockets: list[socket.socket]) -> None:
        self.served = sockets
        while not self.should_exit:
            await asyncio.sleep(0.01)


def bound_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s


def test_built_once_when_due_served_and_closed() -> None:
    now = [100.0]
    server = FakeServer()
    builds = []

    def build():
        builds.append(1)
        return server, [bound_socket()]

    async def main() -> None:
        api = ApiService(build, lambda: now[0])
        assert api.poll(now[0], ready=False, topology_changes=1) is None  # not due yet
        now[0] += API_LATEST_S  # due at the latest, ready or not
        task = api.poll(now[0], ready=False, topology_changes=1)
        assert task is not None
        assert api.poll(now[0], ready=True, topology_changes=1) is None  # once only
        while server.served is None:
            await asyncio.sleep(0.01)
        sock = api.sockets[0]
        api.stop()
        await asyncio.wait_for(task, 2)
        api.close()
        assert sock.fileno() == -1 and api.sockets == []

    asyncio.run(main())
    assert builds == [1]


def test_a_stop_during_the_build_closes_its_sockets_at_once() -> None:
    release = threading.Event()
    made: list[socket.socket] = []
    server = FakeServer()

    def build():
        release.wait(5)
        made.append(bound_socket())
        return server, list(made)

    async def main() -> None:
        api = ApiService(build, lambda: 0.0)
        task = api.poll(API_LATEST_S, ready=True, topology_changes=0)
        assert task is not None
        await asyncio.sleep(0.05)
        api.stop()  # the agent stops while the thread is still building
        release.set()
        await asyncio.wait_for(task, 2)
        assert server.served is None  # never served
        assert made and made[0].fileno() == -1  # and nothing left listening
        assert api.poll(API_LATEST_S * 2, ready=True, topology_changes=0) is None

    asyncio.run(main())


def test_disabled_never_builds() -> None:
    async def main() -> None:
        api = ApiService(lambda: (FakeServer(), []), lambda: 0.0, enabled=False)
        assert api.poll(API_LATEST_S * 10, ready=True, topology_changes=0) is None

    asyncio.run(main())
