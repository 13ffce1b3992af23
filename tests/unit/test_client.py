"""The HTTP client against a fake transport: ordering, chunking, concurrency, errors, retries."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable

import httpx
import pytest

from remote_synth import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    InferenceClient,
    NotFoundError,
    RetryPolicy,
)
from remote_synth._client import _TRANSLATIONS


def completions_handler(seen: list[dict], reverse: bool = True) -> Callable[[httpx.Request], httpx.Response]:
    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        choices = [{"index": i, "text": f"{p}#{i}", "finish_reason": "stop"} for i, p in enumerate(body["prompt"])]
        if reverse:
            choices.reverse()
        return httpx.Response(200, json={"choices": choices})

    return handle


def client(handler: Callable[[httpx.Request], httpx.Response], **kwargs: object) -> InferenceClient:
    return InferenceClient("http://server:8000/v1/", api_key="k", transport=httpx.MockTransport(handler), **kwargs)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_prompts_are_chunked_and_choices_come_back_in_order() -> None:
    seen: list[dict] = []
    c = client(completions_handler(seen), prompts_per_request=3)
    prompts = [f"p{i}" for i in range(8)]
    out = run(c.complete_many("adapter", prompts, {"max_tokens": 5}))
    assert [o.text for o in out] == [f"p{i}#{i % 3}" for i in range(8)]
    assert [len(b["prompt"]) for b in seen] == [3, 3, 2]
    assert all(b["model"] == "adapter" and b["n"] == 1 and b["max_tokens"] == 5 for b in seen)


def test_base_url_with_v1_and_auth_header() -> None:
    urls, auth = [], []

    def handle(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        auth.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"data": [{"id": "a"}]})

    assert run(client(handle).models()) == [{"id": "a"}]
    assert urls == ["http://server:8000/v1/models"] and auth == ["Bearer k"]


def test_concurrency_is_capped() -> None:
    state = {"now": 0, "max": 0}

    async def handle(request: httpx.Request) -> httpx.Response:
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.01)
        state["now"] -= 1
        body = json.loads(request.content)
        return httpx.Response(200, json={"choices": [{"index": i, "text": ""} for i in range(len(body["prompt"]))]})

    c = InferenceClient("http://s", transport=httpx.MockTransport(handle), max_concurrency=2, prompts_per_request=1)
    run(c.complete_many("m", ["x"] * 10, {}))
    assert state["max"] == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (418, APIStatusError),
    ],
)
def test_status_errors_are_typed_and_not_retried(status: int, error: type[Exception]) -> None:
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(status, json={"error": {"message": "nope from server"}})

    with pytest.raises(error, match="nope from server") as info:
        run(client(handle).complete({"prompt": ["a"]}))
    assert info.value.status_code == status
    assert len(calls) == 1


def test_transient_errors_are_retried_then_succeed() -> None:
    answers = [httpx.Response(503, text="busy"), httpx.Response(502, text="gateway")]

    def handle(request: httpx.Request) -> httpx.Response:
        if answers:
            return answers.pop(0)
        return httpx.Response(200, json={"choices": [{"index": 0, "text": "ok"}]})

    c = client(handle, retry=RetryPolicy(max_attempts=3, initial_delay=0.001, max_delay=0.001))
    assert run(c.complete({"prompt": ["a"]}))[0].text == "ok"


def test_retries_are_bounded() -> None:
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("refused")

    c = client(handle, retry=RetryPolicy(max_attempts=2, initial_delay=0.001, max_delay=0.001))
    with pytest.raises(APIConnectionError, match="refused"):
        run(c.complete({"prompt": ["a"]}))
    assert len(calls) == 2


def test_timeouts_are_typed() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    c = client(handle, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(APITimeoutError):
        run(c.complete({"prompt": ["a"]}))


def test_wrong_choice_count_and_non_json_are_errors() -> None:
    c = client(lambda r: httpx.Response(200, json={"choices": []}))
    with pytest.raises(APIError, match="0 choices for 2 prompts"):
        run(c.complete({"prompt": ["a", "b"]}))
    c = client(lambda r: httpx.Response(200, text="<html>"))
    with pytest.raises(APIError, match="not JSON"):
        run(c.models())


def test_health_is_zero_when_nothing_answers() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    assert run(client(handle).health()) == 0


def test_prompt_tokens_fall_back_to_usage_without_tokenize() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            return httpx.Response(404, json={"detail": "Not Found"})
        return httpx.Response(200, json={"choices": [{"index": 0, "text": ""}], "usage": {"prompt_tokens": 42}})

    assert run(client(handle).count_prompt_tokens("m", "p")) == 42


@pytest.mark.parametrize("url", ["ftp://x", "not a url", "localhost:8000"])
def test_bad_base_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        InferenceClient(url)


def test_every_httpx_exception_is_translated() -> None:
    classes = [c for c in vars(httpx).values() if inspect.isclass(c) and issubclass(c, Exception)]
    sources = tuple(source for group, _ in _TRANSLATIONS for source in group)
    assert classes and all(issubclass(c, sources) for c in classes), [c for c in classes if not issubclass(c, sources)]


def test_retry_policy_decisions() -> None:
    policy = RetryPolicy()
    assert policy.should_retry(APITimeoutError("t"))
    assert policy.should_retry(APIStatusError("x", status_code=503))
    assert policy.should_retry(APIStatusError("x", status_code=429))
    assert not policy.should_retry(BadRequestError("x", status_code=400))
    assert not policy.should_retry(AuthenticationError("x", status_code=401))
    assert not policy.should_retry(ValueError("bug"))
