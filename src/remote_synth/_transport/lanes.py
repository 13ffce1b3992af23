"""Connections to one server in lanes: several small httpcore pools instead of one large one.

httpcore 1.0's ``AsyncConnectionPool`` walks every pooled connection on each request's start and end
(and, for each idle one, counts them all again and polls its socket), so its cost per request grows
with the pool: against a server answering after 20 ms on 2 cores, a client with 256 requests in
flight spent 1.7x the CPU per request of one with 16 lanes of 16, and with 1,024 in flight 3.7x
(``scripts/bench_pool.py``). The fix upstream (encode/httpcore#1035) is not released; pydantic's
httpx2 fork has it, but is a second HTTP stack. A request goes to the lane with the fewest requests
in flight, counted until its response is closed, so no lane queues while another has room.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable

import httpx

__all__ = ["LANE_SIZE", "Lanes"]

LANE_SIZE = 16
"""Connections per lane: the pool's walk costs little at this size (lanes of 32 cost 20 % more CPU per
request at 256 in flight, one pool of 32 twice as much as two of 16)."""


class Lanes(httpx.AsyncBaseTransport):
    """``connections`` connections at most, in lanes of at most ``LANE_SIZE``.

    ```python
    lanes = Lanes(256, lambda size: httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=size)))
    client = httpx.AsyncClient(base_url="http://gpu-host:8000", transport=lanes)
    ```
    """

    def __init__(self, connections: int, lane: Callable[[int], httpx.AsyncBaseTransport]) -> None:
        count = max(1, math.ceil(connections / LANE_SIZE))
        self._lanes = [lane(math.ceil(connections / count)) for _ in range(count)]
        self.in_flight = [0] * count
        """Requests per lane whose response is not closed yet."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._lanes)), key=self.in_flight.__getitem__)
        self.in_flight[index] += 1
        try:
            response = await self._lanes[index].handle_async_request(request)
        except BaseException:
            self.in_flight[index] -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Released(response.stream, lambda: self._release(index)),
            extensions=response.extensions,
        )

    def _release(self, index: int) -> None:
        self.in_flight[index] -= 1

    async def aclose(self) -> None:
        for lane in self._lanes:
            await lane.aclose()


class _Released(httpx.AsyncByteStream):
    """A response body that gives its lane's place back when closed (once, however often closed)."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        release, self._release = self._release, None
        try:
            await self._stream.aclose()
        finally:
            if release is not None:
                release()
