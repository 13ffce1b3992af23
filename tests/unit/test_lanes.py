"""Connections in lanes: a request goes to the lane with the fewest in flight, until its response is closed."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from remote_synth._transport import InferenceClient
from remote_synth._transport.lanes import LANE_SIZE, Lanes


class HeldLane(httpx.AsyncBaseTransport):
    """A lane whose requests wait until the test lets them answer (or fail)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.requests = 0
        self.answer = asyncio.Event()
        self.fail = False
        self.closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        await self.answer.wait()
        if self.fail:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, content=b"{}")

    async def aclose(self) -> None:
        self.closed = True


def lanes_of(connections: int) -> tuple[Lanes, list[HeldLane]]:
    made: list[HeldLane] = []

    def lane(size: int) -> HeldLane:
        made.append(HeldLane(size))
        return made[-1]

    return Lanes(connections, lane), made


@pytest.mark.parametrize(
    ("connections", "sizes"),
    [(256, [16] * 16), (20, [10, 10]), (LANE_SIZE, [LANE_SIZE]), (1, [1]), (33, [11, 11, 11])],
)
def test_the_connections_are_split_into_even_lanes_of_at_most_lane_size(connections: int, sizes: list[int]) -> None:
    _, made = lanes_of(connections)
    assert [lane.size for lane in made] == sizes


def test_requests_go_to_the_lane_with_the_fewest_in_flight_until_their_response_is_closed() -> None:
    async def scenario() -> None:
        lanes, made = lanes_of(3 * LANE_SIZE)
        async with httpx.AsyncClient(base_url="http://gpu-host", transport=lanes) as client:
            held = [asyncio.create_task(client.post("/v1/completions")) for _ in range(7)]
            await asyncio.sleep(0)
            assert [lane.requests for lane in made] == [3, 2, 2]  # 1,2,3 then 4,5,6 then the 7th to the first
            assert lanes.in_flight == [3, 2, 2]
            made[1].answer.set()  # the second lane's two answer; the bodies are read and closed
            await asyncio.gather(*[held[i] for i in (1, 4)])
            assert lanes.in_flight == [3, 0, 2]
            async with client.stream("POST", "/v1/completions") as response:  # its body not read yet
                assert made[1].requests == 3 and lanes.in_flight == [3, 1, 2]
                await response.aread()  # read to the end, so closed
                assert lanes.in_flight == [3, 0, 2]
            for lane in made:
                lane.answer.set()
            await asyncio.gather(*held)
        assert lanes.in_flight == [0, 0, 0]
        assert all(lane.closed for lane in made)

    asyncio.run(scenario())


def test_a_failed_request_gives_its_place_back() -> None:
    async def scenario() -> None:
        lanes, made = lanes_of(2 * LANE_SIZE)
        made[0].fail = made[1].fail = True
        made[0].answer.set()
        made[1].answer.set()
        async with httpx.AsyncClient(base_url="http://gpu-host", transport=lanes) as client:
            for _ in range(3):
                with pytest.raises(httpx.ConnectError):
                    await client.get("/health")
        assert lanes.in_flight == [0, 0]
        assert [lane.requests for lane in made] == [3, 0]  # one at a time: the first lane, kept warm

    asyncio.run(scenario())


def test_the_client_uses_lanes_unless_the_environment_names_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx routes by HTTP_PROXY and friends only in its own pool, so there the client keeps it."""

    def transport_of(client: InferenceClient) -> object:
        return client._replicas.replicas[0].http._transport

    for scheme in ("http", "https", "all", "no"):
        monkeypatch.delenv(f"{scheme}_proxy", raising=False)
        monkeypatch.delenv(f"{scheme.upper()}_PROXY", raising=False)
    assert isinstance(transport_of(InferenceClient("http://gpu-host:8000", max_concurrency=64)), Lanes)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    proxied = InferenceClient("https://gpu-host:8000", max_concurrency=64)
    assert isinstance(transport_of(proxied), httpx.AsyncHTTPTransport)
    assert any(mount is not None for mount in proxied._replicas.replicas[0].http._mounts.values())
    monkeypatch.setenv("NO_PROXY", "*")
    assert isinstance(transport_of(InferenceClient("https://gpu-host:8000", max_concurrency=64)), Lanes)
