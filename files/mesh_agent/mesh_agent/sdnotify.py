"""systemd's notify protocol (sd_notify(3)): readiness, stopping, and the watchdog.

The unit is ``Type=notify`` with ``WatchdogSec=``: the agent says ``READY=1`` once its
loop runs, and ``WATCHDOG=1`` every half watchdog interval while its hello timer keeps
ticking. A hung agent (a blocked loop, a stopped process) stops pinging and systemd
kills and restarts it (``Restart=always``). Outside systemd (``NOTIFY_SOCKET`` unset:
tests, the netns lab) every call is a no-op.

The protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` is an abstract address); ``$WATCHDOG_USEC`` is the
interval, meant for us only when ``$WATCHDOG_PID`` is unset or our pid.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("mesh_agent")


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds of ``WatchdogSec=`` meant for process *pid*, or None (no watchdog)."""
    usec, owner = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0 or (owner and owner != str(pid)):
        return None
    return int(usec) / 1e6


def address(env: Mapping[str, str]) -> str | None:
    """The notify socket's address (abstract names with their leading NUL), or None."""
    path = env.get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "/@":
        return None
    return "\0" + path[1:] if path[0] == "@" else path


class Notifier:
    """Sends notify states; a no-op without a socket. A failed send is logged once and
    never raised: systemd's bookkeeping must not stop the agent."""

    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if env is None else env
        pid = os.getpid() if pid is None else pid
        self.address = address(env)
        self.watchdog_s = watchdog_interval(env, pid) if self.address else None
        self._warned = False

    def send(self, *states: str) -> bool:
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                # never wait: a reader that falls behind (a full queue) costs a ping,
                # not the loop
                s.sendto("\n".join(states).encode(), socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            if not self._warned:
                log.warning("systemd notify to %s failed: %s", self.address.lstrip("\0"), exc)
                self._warned = True
            return False
        return True
