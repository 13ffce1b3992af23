"""Keeping a launched server up while work runs against it.

``run_supervised(work, server)`` runs ``work`` (the engine) and, beside it, a
watch on the server process: when the server exits, the watch logs its exit
code and log tail and starts it again on the same port, at most
``max_restarts`` times; past that, the work is cancelled and ``ServerError``
(with the exit code and log tail) says why. While the server restarts, the
work's requests fail without an answer and wait on the engine's recovery
probe, so the work itself needs to know nothing of this. Knows processes, not
records or requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from .._exceptions import ServerError
from .vllm import VllmServer

__all__ = ["run_supervised"]

logger = logging.getLogger("remote_synth.server")

T = TypeVar("T")

INTERVAL = 0.5
"""Seconds between checks that the server still runs."""


async def run_supervised(
    work: Coroutine[Any, Any, T], server: VllmServer, *, max_restarts: int, interval: float = INTERVAL
) -> T:
    """``await work``, restarting ``server`` if it dies meanwhile; the first failure of either ends both."""
    running = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(keep_alive(server, max_restarts=max_restarts, interval=interval))
    try:
        await asyncio.wait({running, watch}, return_when=asyncio.FIRST_COMPLETED)
        if watch.done() and not running.done():
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            watch.result()  # raises why the server could not be kept up
        return running.result()
    finally:
        for task in (running, watch):
            task.cancel()
        await asyncio.gather(running, watch, return_exceptions=True)


async def keep_alive(server: VllmServer, *, max_restarts: int, interval: float = INTERVAL) -> None:
    """Notice within ``interval`` that the server exited; restart it, or raise once restarts run out."""
    while True:
        await asyncio.sleep(interval)
        code = server.returncode
        if code is None:
            continue
        if server.restarts >= max_restarts:
            raise ServerError(
                f"vLLM exited with code {code} during generation, after {server.restarts} restart(s)",
                log_tail=server.log_tail(),
                returncode=code,
            )
        logger.error("vLLM exited with code %d during generation; restarting it (%d of %d). Log tail:\n%s",
                     code, server.restarts + 1, max_restarts, server.log_tail(10))  # fmt: skip
        await asyncio.to_thread(server.restart)
