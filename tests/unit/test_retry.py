"""The retry policy, on a fake clock: what is retried, for how long, how long it waits, what it says."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest

from remote_synth import APIConnectionError, APIStatusError
from remote_synth._exceptions import (
    AuthenticationError,
    BadRequestError,
    MalformedResponseError,
    NotFoundError,
    ServerOverloadedError,
)
from remote_synth._transport import InferenceClient, RetryPolicy


class FakeTime:
    """A clock that only the injected sleep moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def call_with(policy: RetryPolicy, time: FakeTime, failures: list[BaseException], cost: float = 0.0) -> tuple[str, int]:
    """Run a request that fails with ``failures`` in turn, then succeeds; returns (result, attempts)."""
    attempts = 0

    async def go() -> str:
        nonlocal attempts
        async for attempt in policy.retrying(sleep=time.sleep, clock=time.clock):
            with attempt:
                attempts += 1
                time.now += cost
                if failures:
                    raise failures.pop(0)
                return "ok"
        raise AssertionError("unreachable")

    return asyncio.run(go()), attempts


def status(code: int, retry_after: float | None = None) -> APIStatusError:
    cls = ServerOverloadedError if code in (429, 503, 529) else APIStatusError
    return cls(f"POST /v1/completions failed with HTTP {code}: no", status_code=code, endpoint="POST /v1/completions",
               retry_after=retry_after)  # fmt: skip


@pytest.mark.parametrize("code", [408, 429, 502, 503, 504, 529])
def test_passing_statuses_are_retried_until_they_pass(code: int) -> None:
    time = FakeTime()
    result, attempts = call_with(RetryPolicy(), time, [status(code)] * 20)
    assert result == "ok" and attempts == 21
    assert time.now - 1000 < 600


@pytest.mark.parametrize(
    "error",
    [
        APIConnectionError("POST /v1/completions: connection refused"),
        MalformedResponseError("POST /v1/completions: the server's answer is not JSON (cut off?)"),
    ],
)
def test_no_answer_and_an_unreadable_answer_are_retried(error: Exception) -> None:
    result, attempts = call_with(RetryPolicy(), FakeTime(), [error, error])
    assert result == "ok" and attempts == 3


@pytest.mark.parametrize(
    "error",
    [
        BadRequestError("x", status_code=400),
        AuthenticationError("x", status_code=401),
        AuthenticationError("x", status_code=403),
        NotFoundError("x", status_code=404),
        BadRequestError("x", status_code=422),
        ValueError("a bug is not retried"),
    ],
)
def test_the_request_s_own_faults_are_never_retried(error: Exception) -> None:
    time = FakeTime()
    with pytest.raises(type(error)):
        call_with(RetryPolicy(), time, [error])
    assert time.sleeps == []


def test_a_500_is_retried_at_most_twice() -> None:
    time = FakeTime()
    with pytest.raises(APIStatusError) as info:
        call_with(RetryPolicy(), time, [status(500)] * 5)
    assert len(time.sleeps) == 2 and info.value.attempts == 3
    assert call_with(RetryPolicy(), FakeTime(), [status(500), status(503), status(500)])[0] == "ok"


def test_the_budget_is_time_since_the_first_failure_not_attempts() -> None:
    time = FakeTime()
    policy = RetryPolicy(deadline=60, initial_delay=1, max_delay=8)
    with pytest.raises(ServerOverloadedError) as info:
        call_with(policy, time, [status(503)] * 1000)
    waited = sum(time.sleeps)
    assert 60 <= time.now - 1000 <= 61 and waited <= 60 + 1e-9  # never sleeps past the deadline
    assert info.value.attempts == len(time.sleeps) + 1
    assert all(s <= 8 for s in time.sleeps)


def test_a_long_first_attempt_does_not_eat_the_budget() -> None:
    """Ten minutes of generating, then a failure: the server still gets its full deadline to come back."""
    time = FakeTime()
    attempts = 0
    failures = [status(503)] * 3

    async def go() -> str:
        nonlocal attempts
        async for attempt in RetryPolicy(deadline=60).retrying(sleep=time.sleep, clock=time.clock):
            with attempt:
                attempts += 1
                if attempts == 1:
                    time.now += 900  # a long request
                if failures:
                    raise failures.pop(0)
                return "ok"
        raise AssertionError

    assert asyncio.run(go()) == "ok" and attempts == 4


def test_waits_grow_with_jitter_and_honour_retry_after_up_to_a_cap() -> None:
    time = FakeTime()
    call_with(RetryPolicy(initial_delay=1, max_delay=30), time, [status(503)] * 6)
    assert time.sleeps[0] <= 2 and max(time.sleeps) <= 30 and time.sleeps[-1] > time.sleeps[0]
    time = FakeTime()
    call_with(RetryPolicy(initial_delay=0.5, max_retry_after=20), time, [status(429, 7), status(429, 500)])
    assert 7 <= time.sleeps[0] <= 7.5 and 20 <= time.sleeps[1] <= 20.5


def test_the_final_error_names_endpoint_status_message_and_attempts() -> None:
    time = FakeTime()
    with pytest.raises(ServerOverloadedError) as info:
        call_with(RetryPolicy(deadline=10), time, [status(503)] * 100)
    text = str(info.value)
    assert text.startswith("POST /v1/completions failed with HTTP 503: no (gave up after ")
    assert f"{info.value.attempts} attempts over 1" in text and info.value.attempts > 2


def test_each_retry_is_logged_with_status_wait_and_attempt(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="remote_synth.client"):
        call_with(RetryPolicy(), FakeTime(), [status(503), APIConnectionError("POST /v1/completions: reset")])
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("POST /v1/completions: HTTP 503; attempt 1 failed, retrying in ")
    assert lines[1].startswith("POST /v1/completions: reset; attempt 2 failed, retrying in ")


def test_the_client_retries_a_cut_off_body_and_429_with_retry_after() -> None:
    answers = [
        httpx.Response(429, json={"error": {"message": "busy"}}, headers={"retry-after": "3"}),
        httpx.Response(200, text='{"choices": [{"index": 0, "te'),
        httpx.Response(200, json={"choices": [{"index": 0, "text": "ok"}]}),
    ]
    time = FakeTime()

    def handle(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["prompt"] == ["a"]
        return answers.pop(0)

    client = InferenceClient("http://server", transport=httpx.MockTransport(handle))

    async def go() -> str:
        async for attempt in RetryPolicy().retrying(sleep=time.sleep, clock=time.clock):
            with attempt:
                return (await client.send_completions({"prompt": ["a"]}))[0].text
        raise AssertionError

    assert asyncio.run(go()) == "ok"
    assert 3 <= time.sleeps[0] <= 3.5 and len(time.sleeps) == 2
