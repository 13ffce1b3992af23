"""``until``: the one wait loop, asking a probe once a second (no HTTP here, so the engine may use it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["INTERVAL", "Probe", "until"]

Probe = Callable[[], Awaitable[bool]]
INTERVAL = 1.0
"""Seconds between probes: someone is usually watching, and a probe is cheap."""


async def until(
    probe: Probe,
    *,
    timeout: float,
    interval: float = INTERVAL,
    on_wait: Callable[[float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> bool:
    """Ask ``probe`` until it says yes (True), or ``timeout`` seconds pass (False); never sleeps past it.

    ``on_wait(seconds waited)`` is called before each sleep. What the probe raises ends the wait.
    """
    started = clock()
    while not await probe():
        waited = clock() - started
        if waited >= timeout:
            return False
        if on_wait is not None:
            on_wait(waited)
        await sleep(min(interval, timeout - waited))
    return True
