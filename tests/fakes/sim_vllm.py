"""A simulated vLLM server, in process, as an httpx transport: for scheduler tests and capacity benchmarks.

It has ``slots`` sequence slots (vLLM's ``max_num_seqs``). Every prompt of a
``/v1/completions`` request is one sequence: it waits for a free slot (FIFO),
holds it for a lognormal time, then frees it; the response returns when all of
the request's sequences are done (no streaming, as the engine uses it). A
request cancelled by its client aborts its sequences, as vLLM does on a
disconnect. ``/metrics`` publishes ``vllm:num_requests_running`` and
``vllm:num_requests_waiting`` (in sequences, like vLLM). Busy slot-seconds are
counted, so a benchmark can tell which share of the capacity was used.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import deque
from collections.abc import Callable

import httpx

from .vllm_core import VllmCore, as_httpx, metrics_text

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}, "c": {"enum": ["x", "y"]}},
    "required": ["n", "c"],
}
"""The table the simulated completions are records of."""
RECORD = '{"n":%d,"c":"%s"}\n'


def records_text(rng: random.Random, mean_records: int = 5, invalid_share: float = 0.05) -> str:
    """A completion with about ``mean_records`` lines, a few of them invalid."""
    lines = []
    for _ in range(rng.randint(max(1, mean_records - 2), mean_records + 2)):
        if rng.random() < invalid_share:
            lines.append('{"n":"bad","c":"x"}\n')
        else:
            lines.append(RECORD % (rng.randint(0, 9), rng.choice("xy")))
    return "".join(lines)


class SimulatedVllm(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=SimulatedVllm(256))`` talks to a 256-slot simulated server."""

    def __init__(
        self,
        slots: int,
        *,
        mean: float = 0.5,
        sigma: float = 0.6,
        seed: int = 0,
        adapter: str = "nss-adapter",
        metrics: bool = True,
        text: Callable[[random.Random], str] = records_text,
        continuation: Callable[[random.Random, str], str] | None = None,
        sized_text: Callable[[random.Random, float], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = slots
        self.mean = mean
        self.sigma = sigma
        self.metrics = metrics
        self.adapter = adapter
        self.core = VllmCore(adapters=[adapter], context=4096)
        self._rng = random.Random(seed)
        self._text = text
        self._continuation = continuation
        """Completions that depend on their prompt (time series: the next records of its prefill)."""
        self._sized_text = sized_text
        """Completions as long as they took, as on a real server, where a sequence that runs longer writes more
        records: called with its time over the mean (so the first completions back are the short ones)."""
        self._clock = clock
        self._mu = math.log(mean) - sigma**2 / 2 if sigma > 0 else math.log(mean) if mean > 0 else 0.0
        self.running = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self.busy_seconds = 0.0
        self.sequences_done = 0
        self.sequences_aborted = 0
        self.requests = 0
        self.max_running = 0

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._queue if not f.done())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.core.metrics = metrics_text(self.running, self.waiting) if self.metrics else None
        shared = self.core.route(request.method, request.url.path, await request.aread())
        if shared is not None:
            return as_httpx(shared)
        body = json.loads(await request.aread())
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        self.requests += 1
        texts = await asyncio.gather(*(self._sequence(p) for p in prompts))
        choices = [{"index": i, "text": t, "finish_reason": "stop"} for i, t in enumerate(texts)]
        return httpx.Response(200, json={"choices": choices})

    async def _sequence(self, prompt: str) -> str:
        await self._slot()
        started = self._clock()
        try:
            duration = self._duration()
            await asyncio.sleep(duration)
            self.sequences_done += 1
            if self._continuation is not None:
                return self._continuation(self._rng, prompt)
            if self._sized_text is not None:
                return self._sized_text(self._rng, duration / self.mean if self.mean > 0 else 1.0)
            return self._text(self._rng)
        except asyncio.CancelledError:
            self.sequences_aborted += 1
            raise
        finally:
            self.busy_seconds += self._clock() - started
            self.running -= 1
            self._next()

    async def _slot(self) -> None:
        if self.running < self.slots and not self._queue:
            self._take()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # given a slot as it was aborted
                self.running -= 1
                self._next()
            raise

    def _take(self) -> None:
        self.running += 1
        self.max_running = max(self.max_running, self.running)

    def _next(self) -> None:
        while self._queue and self.running < self.slots:
            future = self._queue.popleft()
            if not future.done():
                self._take()
                future.set_result(None)

    def _duration(self) -> float:
        if self.mean <= 0:
            return 0.0
        return self._rng.lognormvariate(self._mu, self.sigma) if self.sigma > 0 else self.mean
