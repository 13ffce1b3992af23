"""Waiting for a server that went away: one probe loop, however many requests wait on it.

When requests fail with no answer (connection refused or reset, timeouts), the
server may be restarting, or a gateway may be between replicas. Instead of every
request hammering it on its own backoff, the first to fail starts a probe (the
caller's: health and the adapter check), and every failed request waits on that
same probe before its next attempt. The probe gives up after ``deadline``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .._exceptions import APIConnectionError
from .._transport.polling import INTERVAL, Probe, until

__all__ = ["Recovery"]

logger = logging.getLogger("remote_synth.engine")


class Recovery:
    """``await recovery.wait()`` returns once ``probe()`` says the server is back.

    ```python
    recovery = Recovery(lambda: is_ready(client, adapter), deadline=600)
    await recovery.wait()      # shared by every caller while one probe loop runs
    ```
    """

    def __init__(
        self,
        probe: Probe,
        *,
        deadline: float,
        interval: float = INTERVAL,
        where: str = "the server",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probe = probe
        self.deadline = deadline
        self.interval = interval
        self.where = where
        self.outages = 0
        self._sleep = sleep
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def wait(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._until_back())
        await asyncio.shield(self._task)

    async def _until_back(self) -> None:
        started = self._clock()
        self.outages += 1
        logger.warning("%s is not answering; waiting up to %.0f s for it to come back", self.where, self.deadline)
        back = await until(self._back, timeout=self.deadline, interval=self.interval, clock=self._clock,
                           sleep=self._sleep)  # fmt: skip
        if not back:
            raise APIConnectionError(f"{self.where} did not come back within {self.deadline:.0f} s")
        logger.warning("%s is back after %.0f s", self.where, self._clock() - started)

    async def _back(self) -> bool:
        try:
            return await self.probe()
        except Exception as exc:  # noqa: BLE001 - any failure of the probe means "not yet"
            logger.debug("probe of %s failed: %s", self.where, exc)
            return False

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
