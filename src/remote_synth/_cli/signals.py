"""SIGTERM and SIGHUP unwind like Ctrl-C, so what we started is stopped and the rows are kept."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from .exits import Terminated


@contextlib.contextmanager
def signals_raise_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (``kill``, a container stop, a closed terminal) unwind like Ctrl-C.

    So the server we started is stopped and the rows are kept; the exit code says which (143).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
