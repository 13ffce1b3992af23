"""Waiting for a server to be ready: one loop, used wherever we wait.

A launched server's start (``VllmServer.wait_ready``), ``--wait-for-server`` for a stack that starts
the server beside us, and the engine's recovery after an outage all ask a probe once a second until
it says yes or the time is up, through ``polling.until``. What "ready" means is ``is_ready``: ``/health``
answers (a 404 is a gateway without that route) and ``/v1/models`` lists the adapters. A replica
that failed comes back on the same ``/health`` answers (``replicas.ANSWERED``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from .client import InferenceClient
from .models import serves
from .polling import until
from .replicas import ANSWERED

__all__ = ["is_ready", "run_blocking", "until"]

T = TypeVar("T")


async def is_ready(client: InferenceClient, *adapters: str) -> bool:
    """``/health`` answers and ``/v1/models`` lists every one of ``adapters`` (none: health only)."""
    if await client.health() not in ANSWERED:
        return False
    return not adapters or serves(await client.models(), *adapters)


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end from synchronous code, also where this thread already runs a loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="remote-synth-blocking")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]
