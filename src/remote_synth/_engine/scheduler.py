"""The scheduler: keeps the server's window full with jobs from a producer, across batch boundaries.

A ``JobSource`` (tabular accounting today, time series later) says how many more
prompts it wants and hands out jobs; the scheduler sends each job as one request
while the ``Gate`` has room, passes every completed job back at once, polls the
server's load to size the window, and stops when the source is done, cancelling
whatever is still in flight (vLLM aborts a request whose client goes away).

Retries happen outside the window: a request sleeping in backoff gives its
prompts back to the gate, and queues for them again before its next attempt.
A request that got no answer at all first waits for the server to be back
(``Recovery``: one shared probe), so an outage costs a probe, not a storm.
A request that fails for good ends the run; every job that completed before it
has already been handed to the source, so nothing it produced is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .._exceptions import APIConnectionError, APIError, APITimeoutError, NotFoundError, ServerOverloadedError
from .._transport.retry import RetryPolicy
from .._transport.types import Completion, CompletionSender, Prompt, ServerLoad, completions_body
from .recovery import Recovery
from .window import Gate, WindowPolicy

__all__ = ["EngineStats", "Job", "JobSource", "Scheduler"]

logger = logging.getLogger("remote_synth.engine")

Sleep = Callable[[float], Awaitable[None]]

STEADY_BACKOFF = 8
"""While the window holds steady, load readings space out up to this many intervals."""
START_SPEEDUP = 5
"""While the window doubles towards the server's capacity, readings come this many times as often."""
JITTER = 0.5
"""Once the window has found the server, each pause between readings is its length times a factor drawn
from 1 ± this. Jobs sharing a server read it on clocks of the same period: unjittered, one whose
readings fell just after the others' refills saw their queue every time and was cut, reading after
reading, towards one request (four equal 20,000-record jobs on a simulated 128-slot server: the
fastest had 1.8-2.4x the slowest's records/s)."""


def _jitter() -> float:
    return random.uniform(1 - JITTER, 1 + JITTER)


@dataclass(frozen=True)
class Job:
    """Prompts that go out as one request, with their sampling fields."""

    prompts: Sequence[Prompt]
    params: Mapping[str, object]
    """Every sampling field of the request body except ``model``, ``prompt`` and ``n``."""
    prepare: Callable[[], Awaitable[Job]] | None = None
    """Makes the job that is sent, as it is sent (same size): for prompts that need the server
    first (token ids from ``/tokenize``). The source still gets this job's completions."""

    @property
    def size(self) -> int:
        return len(self.prompts)


class JobSource(Protocol):
    """What the scheduler drives: a producer of jobs that also consumes their completions."""

    @property
    def done(self) -> bool:
        """No more completions are wanted (target reached or a stop condition)."""

    def demand(self, outstanding: int, capacity: int = 0) -> int:
        """Prompts wanted beyond the ``outstanding`` ones already sent or being sent (``capacity``:
        the most sequences the server was seen running, 0 when unknown: how large it is)."""

    def job_size(self, prompts: int) -> int:
        """The size of the job ``next_job(prompts)`` would hand out now (at most ``prompts``): the
        window is asked for room for that, not for the request the scheduler would have sent."""

    def next_job(self, prompts: int) -> Job:
        """A job of ``job_size(prompts)`` prompts."""

    def complete(self, job: Job, completions: Sequence[Completion]) -> None:
        """A job's completions, in prompt order, as soon as its request returns."""


@dataclass
class EngineStats:
    """What one run sent and what came of it (prompts, not requests, unless named so)."""

    requests: int = 0
    prompts_sent: int = 0
    prompts_completed: int = 0
    prompts_discarded: int = 0
    """Prompts of whole jobs cancelled in flight at the end, or back after the source was done.
    (A job the target was reached in the middle of counts as completed: overshoot, exactly,
    is ``prompts_sent`` less the completions the source used.)"""
    retries: int = 0
    overloads: int = 0
    window_samples: list[int] = field(default_factory=list)
    """The window's limit at each load reading (for benchmarks and logs)."""
    failures: Counter[str] = field(default_factory=Counter)
    """Failed attempts by what the transport's error says: its HTTP status, else ``connection``
    or ``timeout`` (each was retried, or ended the run)."""
    load: ServerLoad | None = None
    """The server's last load reading."""


class Scheduler:
    """Runs a ``JobSource`` to its end against one server.

    ```python
    scheduler = Scheduler(client, "nss-adapter", WindowPolicy(WindowSettings()))
    stats = await scheduler.run(source)     # returns when source.done; raises what failed for good
    ```
    """

    def __init__(
        self,
        client: CompletionSender,
        model: str,
        window: WindowPolicy,
        *,
        retry: RetryPolicy | None = None,
        prompts_per_request: int = 25,
        load_interval: float = 0.5,
        recovery: Recovery | None = None,
        reregister: Callable[[], Awaitable[object]] | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = _jitter,
    ) -> None:
        if prompts_per_request < 1:
            raise ValueError("prompts_per_request must be at least 1")
        self.client = client
        self.model = model
        self.window = window
        self.retry = retry or client.retry
        self.prompts_per_request = prompts_per_request
        self.load_interval = load_interval
        self.recovery = recovery
        self.reregister = reregister
        """Registers the model again after a 404 (a restarted server lost a runtime-loaded adapter)."""
        self._reregistering: asyncio.Future[object] | None = None
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        """A factor for each steady pause between readings (``JITTER``)."""
        self.stats = EngineStats()
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        """Set when the gate turned new work away: while the window is still finding the server's
        size, a reading is due soon (the window may double), not after a steady backoff."""
        self._gate = Gate(window.limit, on_release=self._wake.set)
        self._running: dict[asyncio.Task[Sequence[Completion]], Job] = {}

    @property
    def in_flight(self) -> int:
        """Prompts at the server now (not those sleeping in a retry backoff)."""
        return self._gate.in_flight

    @property
    def outstanding(self) -> int:
        """Prompts sent or still to be sent again: every job not yet handed back."""
        return sum(job.size for job in self._running.values())

    async def run(self, source: JobSource) -> EngineStats:
        """Send jobs until ``source.done``; cancel what is left in flight, also on failure."""
        watcher = asyncio.create_task(self._watch_load())
        try:
            while not source.done:
                self._fill(source)
                if not self._running:
                    raise RuntimeError("the job source wants nothing more but is not done")
                await self._wake.wait()
                self._wake.clear()
                self._collect(source)
        finally:
            watcher.cancel()
            if self.recovery is not None:
                self.recovery.cancel()
            await self._cancel_all()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        return self.stats

    def _fill(self, source: JobSource) -> None:
        """Start jobs while the source wants prompts and the window has room for a request."""
        while not source.done:
            wanted = min(self.prompts_per_request, source.demand(self.outstanding, self.window.capacity))
            if wanted < 1:
                return
            # the room asked for is the job's own size: a source that sends small jobs (at the start, near
            # the end, a time series' samples) would otherwise wait for a full request's room, and a
            # window cut below that on a shared server would stay there, one small job out at a time
            size = source.job_size(wanted)
            if size > self._gate.room() and self._gate.in_flight > 0:
                self._full.set()
                return
            job = source.next_job(size)
            self._gate.take(job.size)
            task = asyncio.create_task(self._send(job))
            task.add_done_callback(lambda _: self._wake.set())
            self._running[task] = job
            self.stats.requests += 1
            self.stats.prompts_sent += job.size

    def _collect(self, source: JobSource) -> None:
        """Hand every finished job to the source, then end the run on the first failure among them."""
        failures: list[BaseException] = []
        for task in [t for t in self._running if t.done()]:
            job = self._running.pop(task)
            if task.cancelled():
                continue
            error = task.exception()
            if error is not None:
                failures.append(error)
                continue
            self.stats.prompts_completed += job.size
            self._gate.resize(self.window.completed(job.size))
            if not source.done:
                source.complete(job, task.result())
            else:
                self.stats.prompts_discarded += job.size  # arrived after the end: not used
        if failures:
            raise failures[0]

    async def _send(self, job: Job) -> Sequence[Completion]:
        """One job, retried by the policy; a model the server lost (404) is registered again, once per run."""
        sent = await self._prepared(job)
        body = completions_body(self.model, sent.prompts, sent.params)
        try:
            return await self._attempts(job, body, holding=True)  # the scheduler reserved the first room
        except NotFoundError:
            if self.reregister is None:
                raise
            if self._reregistering is None:
                logger.warning("the server no longer serves %r (restarted?); registering it again", self.model)
                self._reregistering = asyncio.ensure_future(self.reregister())
            await asyncio.shield(self._reregistering)
            return await self._attempts(job, body, holding=False)

    async def _prepared(self, job: Job) -> Job:
        """The job as it goes out; its preparation is retried like a request (it is one)."""
        if job.prepare is None:
            return job
        async for attempt in self.retry.retrying(sleep=self._sleep, clock=self._clock):
            with attempt:
                sent = await job.prepare()
                if sent.size != job.size:
                    raise ValueError(f"a prepared job has {sent.size} prompts for {job.size}")
                return sent
        raise AssertionError("unreachable: the retry policy reraises the last error")

    async def _attempts(self, job: Job, body: dict[str, object], *, holding: bool) -> Sequence[Completion]:
        """Attempts by the retry policy; between attempts the job holds no room in the window."""
        unanswered = False
        async for attempt in self.retry.retrying(sleep=self._sleep, clock=self._clock):
            with attempt:
                if not holding:
                    self.stats.retries += 1
                    if unanswered and self.recovery is not None:
                        await self.recovery.wait()
                    await self._gate.acquire(job.size)
                    holding = True
                try:
                    return await self.client.send_completions(body)
                except APIError as exc:
                    self.stats.failures[_failure_kind(exc)] += 1
                    unanswered = isinstance(exc, APIConnectionError)  # no answer: wait for the server first
                    if isinstance(exc, ServerOverloadedError):
                        self.stats.overloads += 1
                        self._gate.resize(self.window.overloaded())
                    raise
                finally:
                    self._gate.release(job.size)
                    holding = False
        raise AssertionError("unreachable: the retry policy reraises the last error")

    async def _watch_load(self) -> None:
        """Size the window from the server's queue; stop at once if the server has no metrics.

        A reading costs the server some CPU (vLLM renders ~70 kB of metrics), so while the
        window holds steady the readings space out, up to ``STEADY_BACKOFF`` times the interval.
        """
        interval = self.load_interval
        while True:
            try:
                load = await self.client.load()
            except APIError as exc:
                logger.debug("no load reading this time: %s", exc)
            else:
                self.stats.load = load
                before = self._gate.limit
                self._gate.resize(self.window.observe(load, self._gate.in_flight))
                if not self.window.metrics:
                    logger.info("the server publishes no vLLM metrics: a fixed window of %d prompts", self._gate.limit)
                    return
                self.stats.window_samples.append(self._gate.limit)
                steady = self._gate.limit == before and not self.window.holding  # a hold is no steady state
                interval = min(interval * 2, self.load_interval * STEADY_BACKOFF) if steady else self.load_interval
                if self.window.starting and (not steady or not self.window.capacity):
                    # doubling, the next reading may double again; or nothing seen running yet, and the
                    # next reading tells the server's size to the job's start (accounting's young queue)
                    interval = self.load_interval / START_SPEEDUP
                self._wake.set()
            await self._pause(interval)

    async def _pause(self, interval: float) -> None:
        """Until the next reading: ``interval``, or, while the window still doubles towards the
        server's capacity, a fifth of the load interval after the gate fills (the server has had
        time to take up what was sent, so its queue is not misread as a lasting one)."""
        self._full.clear()
        if not self.window.starting:
            await self._sleep(interval * self._jitter())
            return
        sleeping = asyncio.ensure_future(self._sleep(interval))
        filled = asyncio.ensure_future(self._full.wait())
        try:
            await asyncio.wait({sleeping, filled}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            sleeping.cancel()
            raise
        finally:
            filled.cancel()
        if sleeping.done():
            await sleeping  # the whole pause (a sleep that failed, or was cancelled, propagates)
            return
        sleeping.cancel()
        await self._sleep(self.load_interval / START_SPEEDUP)

    async def _cancel_all(self) -> None:
        tasks = list(self._running)
        for task in tasks:
            if not task.done():
                self.stats.prompts_discarded += self._running[task].size
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()


def _failure_kind(exc: APIError) -> str:
    """A failed attempt's label: the status the server answered, or how no answer came."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and status:
        return str(status)
    if isinstance(exc, APITimeoutError):
        return "timeout"
    return "connection" if isinstance(exc, APIConnectionError) else "other"
