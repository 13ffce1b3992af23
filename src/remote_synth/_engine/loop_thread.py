"""Running our async core from synchronous callers, including ones inside an event loop.

NSS's contract is synchronous, and notebooks already run an event loop, so
``asyncio.run`` is not an option: the backend owns one loop on a daemon thread
and hands it coroutines. Cancelling means cancelling the tasks on that loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """An event loop on its own thread; ``run(coro)`` blocks until the coroutine is done."""

    def __init__(self, name: str = "remote-synth-loop") -> None:
        self._loop = asyncio.new_event_loop()
        self._close_when_stopped = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._loop.run_forever()
        if self._close_when_stopped:  # close_soon(): nobody will join this thread to close the loop
            self._loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def closed(self) -> bool:
        return self._loop.is_closed()

    def run(self, coro: Coroutine[Any, Any, T], unwind_timeout: float = 30.0) -> T:
        """Run ``coro`` on the loop; KeyboardInterrupt here cancels it there.

        After a cancel it waits (up to ``unwind_timeout``) for the coroutine to have
        unwound, so the caller never reads state the loop thread is still changing.
        """
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.run() called on the loop's own thread: it would wait on itself")
        finished = threading.Event()
        future = asyncio.run_coroutine_threadsafe(_signalling(coro, finished), self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            if self._thread.is_alive():
                finished.wait(unwind_timeout)
            raise

    def cancel_all(self, timeout: float = 5.0) -> int:
        """Cancel every task on the loop and wait for them to finish; returns how many."""
        if self.closed or not self._thread.is_alive():
            return 0
        if threading.current_thread() is self._thread:
            raise RuntimeError("LoopThread.cancel_all() called on the loop's own thread: it would wait on itself")

        async def _cancel() -> int:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return len(tasks)

        return asyncio.run_coroutine_threadsafe(_cancel(), self._loop).result(timeout)

    def close_soon(self, last: Coroutine[Any, Any, object] | None = None) -> None:
        """Stop the loop without waiting for it: ``last`` runs on it first (a finalizer's path)."""
        if self.closed or not self._thread.is_alive():
            if last is not None:
                last.close()
            return

        async def _finish() -> None:
            try:
                if last is not None:
                    await last
            finally:
                asyncio.get_running_loop().stop()

        self._close_when_stopped = True
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(_finish()))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop and its thread; idempotent."""
        if self.closed:
            return
        if threading.current_thread() is self._thread:
            self._loop.stop()  # on its own thread: stopping is all it can do
            return
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        if not self._loop.is_running():
            self._loop.close()


async def _signalling(coro: Coroutine[Any, Any, T], finished: threading.Event) -> T:
    try:
        return await coro
    finally:
        finished.set()
