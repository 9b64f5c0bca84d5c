"""systemd's notify protocol, against real AF_UNIX datagram sockets (a path and an abstract
name), as systemd reads it: readiness, the watchdog interval meant for us, no-ops outside
systemd, and a dead socket that never raises."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from mesh_agent.sdnotify import Notifier, address, watchdog_interval


def receiver(tmp_path: Path, abstract: bool) -> tuple[socket.socket, str]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"meshcore-test-{os.getpid()}-{id(s)}"
        s.bind("\0" + name)
        env_value = "@" + name
    else:
        path = tmp_path / "notify"
        s.bind(str(path))
        env_value = str(path)
    s.settimeout(2)
    return s, env_value


@pytest.mark.parametrize("abstract", [False, True])
def test_ready_and_watchdog_reach_the_socket(tmp_path: Path, abstract: bool) -> None:
    sock, value = receiver(tmp_path, abstract)
    with sock:
        n = Notifier({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "42"},
                     pid=42)
        assert n.watchdog_s == 5.0
        assert n.send("READY=1", "STATUS=enforce mode")
        assert sock.recv(4096) == b"READY=1\nSTATUS=enforce mode"
        assert n.send("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize(("env", "pid", "want"), [
    ({"WATCHDOG_USEC": "30000000"}, 7, 30.0),  # no WATCHDOG_PID: ours
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 7, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, 7, None),  # our parent's
    ({"WATCHDOG_USEC": "0"}, 7, None),
    ({"WATCHDOG_USEC": "-5"}, 7, None),
    ({"WATCHDOG_USEC": "soon"}, 7, None),
    ({}, 7, None),
])
def test_the_watchdog_interval_is_ours_or_none(env: dict[str, str], pid: int,
                                               want: float | None) -> None:
    assert watchdog_interval(env, pid) == want


def test_outside_systemd_everything_is_a_no_op() -> None:
    n = Notifier({"WATCHDOG_USEC": "5000000"}, pid=1)  # a watchdog but no socket
    assert n.address is None and n.watchdog_s is None
    assert not n.send("READY=1")
    for junk in ("", "relative/path", "tcp://x"):
        assert address({"NOTIFY_SOCKET": junk}) is None


def test_a_dead_socket_is_logged_once_and_never_raises(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}, pid=1)
    with caplog.at_level(logging.WARNING, logger="mesh_agent"):
        assert not n.send("READY=1")
        assert not n.send("WATCHDOG=1")
    assert len([r for r in caplog.records if "notify" in r.getMessage()]) == 1
