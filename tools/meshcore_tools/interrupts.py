"""SIGINT and SIGTERM for a controller run that must clean up after itself.

The first signal raises KeyboardInterrupt where the run is; a later one, or any
while ``armed`` is off (the cleanup has begun), is only counted, so a second
Ctrl-C cannot cut a cleanup short. Installed whatever was inherited: a process
started in the background with SIGINT ignored never sees a KeyboardInterrupt
otherwise, and SIGTERM's default skips all cleanup. Used by the chaos runner
(rollback) and the emulated Pis (``hwlab``: VMs and Prometheus).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupts:
    """The SIGINT and SIGTERM handler of a run: the first signal raises KeyboardInterrupt (the
    run stops and cleans up); a later one, or one once ``armed`` is off (the cleanup has
    begun), is only counted. ``signum`` is the last signal received."""

    def __init__(self, label: str = "chaos") -> None:
        self.label = label
        self.received = 0
        self.signum: int | None = None
        self.armed = True

    def __call__(self, signum: int, frame: object) -> None:
        self.received += 1
        self.signum = signum
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
        os.write(2, f"[{self.label}] signal {signum} ignored: the run is stopping\n".encode())


@contextmanager
def interrupts(label: str = "chaos") -> Iterator[Interrupts | None]:
    """:class:`Interrupts` on SIGINT and SIGTERM inside, whatever was inherited; the handlers
    before are restored after. Nested, the outer one stays (``cmd_run`` holds it until the
    journals are written). None outside the main thread, where signals cannot be handled."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    current = signal.getsignal(signal.SIGINT)
    if isinstance(current, Interrupts):
        yield current
        return
    handler = Interrupts(label)
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield handler
    finally:
        for s, h in old.items():
            signal.signal(s, h)
