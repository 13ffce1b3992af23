"""How many prompts may be at the server at once: a gate, and the policy that sizes it.

The unit is one prompt (one sequence), because that is what a vLLM server
schedules: a request carrying 25 prompts takes 25 of its ``max_num_seqs`` slots.

``WindowPolicy`` is pure: it is told what the server reports (``/metrics``) and
what the server rejects (429/503/529), and answers with a new limit. ``Gate``
holds the limit and counts what is in flight; requests that come back from a
retry backoff wait in it ahead of new work.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .._transport.types import ServerLoad

__all__ = ["Gate", "WindowPolicy", "WindowSettings"]


@dataclass(frozen=True)
class WindowSettings:
    """The window's bounds and step; see ``WindowPolicy`` for how they are used."""

    initial: int = 256
    """Prompts in flight at first; with no metrics, the window for the whole job."""
    maximum: int = 4096
    """Never more than this, whatever the metrics say (a bound on a misreading server)."""
    minimum: int = 1
    step: int = 25
    """Additive increase, in prompts (one request's worth)."""
    queue_fraction: float = 0.25
    """The server's queue may hold this share of its running sequences (at least ``step``)."""
    share: float = 1.0
    """On a shared server, at most this share of its capacity (the most sequences seen running)."""

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.initial <= self.maximum or self.step < 1:
            raise ValueError(f"window bounds must satisfy 1 <= minimum <= initial <= maximum, step >= 1: {self}")
        if not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1]: {self.share}")


class WindowPolicy:
    """AIMD over the server's own queue, so the server stays full and its queue stays shallow.

    - Metrics, no queue, and we use the whole window: grow (doubling until the
      first queue is seen, read five times as often meanwhile, so that the server's
      capacity is found within about a completion time; then by the queue allowance
      left and the slots the server was seen running but runs nothing in now, at
      least one ``step``).
    - Metrics, a queue deeper than the allowance: cut the window by the excess,
      then hold until what is in flight has come down to the new limit or the
      queue to the allowance (one decision per round trip, or the same queue would
      be counted twice; what is in flight includes finished prompts whose request
      waits for a slower sibling, so it may stay above the limit with the server
      half idle).
    - 429, 503 or 529: halve.
    - No metrics (a gateway): the initial window is the window; after a halving it
      grows back by ``step`` per window's worth of completed prompts.
    """

    def __init__(self, settings: WindowSettings) -> None:
        self.settings = settings
        self.limit = settings.initial
        self.metrics = True
        """False once the server showed it publishes no vLLM metrics."""
        self._slow_start = True
        self._cut_pending = False
        self._capacity = 0.0
        """The most sequences seen running at once: the server's capacity as far as we know."""

    def observe(self, load: ServerLoad | None, in_flight: int) -> int:
        """A ``/metrics`` reading (None: no vLLM gauges there) and our prompts in flight then."""
        if load is None:
            self.metrics = False
            return self.limit
        s = self.settings
        allowance = max(s.step, math.ceil(s.queue_fraction * load.running))
        # Hold until the cut has taken effect: what is in flight has come down to it (below one
        # request's worth, as soon as one request is out: the gate always lets one through), or the
        # server's queue has (what is in flight may be finished prompts a slower sibling holds).
        if self._cut_pending and in_flight > max(self.limit, s.step) and load.waiting > allowance:
            return self.limit
        self._cut_pending = False
        # On a shared server the queue is everyone's: each job cuts (and grows) by its part of it,
        # the part of the server's sequences that are its own (1 for a job alone on the server).
        mine = min(1.0, in_flight / max(1.0, load.running + load.waiting))
        if load.waiting > allowance:
            self._slow_start = False
            self._cut_pending = True
            self.limit = self._bounded(min(self.limit, in_flight) - math.ceil((load.waiting - allowance) * mine))
        elif load.waiting < allowance and in_flight + s.step > self.limit:
            # Room in the queue, and slots the server has been seen to run but runs nothing in now
            # (our prompts in flight may be finished ones waiting for a slower sibling's request).
            idle = max(0, self.capacity - load.running)
            free = int((allowance - load.waiting + idle) * mine)
            grown = self.limit * 2 if self._slow_start else self.limit + max(s.step, free)
            self.limit = self._bounded(grown)
        self._capacity = max(self._capacity, load.running)
        if s.share < 1 and self._capacity:
            self.limit = min(self.limit, self._bounded(math.ceil(s.share * self._capacity)))
        return self.limit

    @property
    def capacity(self) -> int:
        """The most sequences seen running at once (0: no metrics): how large the server is."""
        return int(self._capacity)

    @property
    def holding(self) -> bool:
        """A cut waits for what is in flight, or the server's queue, to come down to it: the next
        reading decides again."""
        return self._cut_pending

    @property
    def starting(self) -> bool:
        """Still doubling: the server's capacity is not known yet."""
        return self._slow_start and self.metrics

    def overloaded(self) -> int:
        """The server (or a gateway) refused work for load: halve."""
        self._slow_start = False
        self.limit = self._bounded(self.limit // 2)
        return self.limit

    def completed(self, prompts: int) -> int:
        """Without metrics, win back a halved window: ``step`` per window's worth of completions."""
        if not self.metrics and self.limit < self.settings.initial:
            gain = max(1, self.settings.step * prompts // self.limit)
            self.limit = min(self.settings.initial, self.limit + gain)
        return self.limit

    def _bounded(self, value: int) -> int:
        return max(self.settings.minimum, min(self.settings.maximum, value))


class Gate:
    """Counts prompts in flight against a limit that can change while requests run.

    New work is started by the scheduler only when ``room()`` allows (``take``
    reserves at once, so two starts in one pass cannot both see the same room).
    A request coming back from a retry backoff ``acquire``s and waits its turn,
    ahead of new work: ``room()`` counts it as taken.
    """

    def __init__(self, limit: int, on_release: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.in_flight = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._on_release = on_release

    def room(self) -> int:
        return self.limit - self.in_flight - sum(n for n, _ in self._waiters)

    def take(self, n: int) -> None:
        self.in_flight += n

    def release(self, n: int) -> None:
        self.in_flight -= n
        self._grant()
        self._on_release()

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._grant()

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` prompts fit (or nothing is in flight), first come first served."""
        if not self._waiters and self._fits(n):
            self.take(n)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, future)
        self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(n)  # granted just as we were cancelled
            else:
                self._waiters.remove(entry)
            raise

    def _fits(self, n: int) -> bool:
        return self.in_flight == 0 or self.in_flight + n <= self.limit

    def _grant(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            n, future = self._waiters.popleft()
            if not future.done():
                self.take(n)
                future.set_result(None)
