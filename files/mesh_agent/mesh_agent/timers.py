"""A periodic timer for the asyncio shell that keeps its cadence and reports lateness."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("mesh_agent")


async def every(
    clock: Callable[[], float],
    interval: float,
    fn: Callable[[], Awaitable[None] | None],
    lag: Callable[[float], None] | None = None,
) -> None:
    """Call ``fn`` every ``interval`` seconds forever; ``lag(late)`` first, if given.
    When ``fn`` returns an awaitable (a coroutine function), it is awaited before the
    next tick is scheduled: its blocking parts can run in a worker thread.

    An overrun skips the missed ticks rather than bunching them, and an
    exception in one tick is logged without stopping the timer.
    """
    next_at = clock()
    while True:
        if lag is not None:
            lag(clock() - next_at)
        try:
            result = fn()
            if inspect.isawaitable(result):
                await result
        except Exception:  # a bug in one tick must not stop the timer
            log.exception("timer %s failed", getattr(fn, "__name__", fn))
        next_at += interval
        delay = next_at - clock()
        if delay < 0:
            next_at, delay = clock(), 0.0
        await asyncio.sleep(delay)
