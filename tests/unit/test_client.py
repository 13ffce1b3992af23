"""The HTTP client against a fake transport: ordering, chunking, concurrency, errors, retries."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Callable

import httpx
import pytest

from remote_synth import APIStatusError, ConfigError
from remote_synth._exceptions import (
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    MalformedResponseError,
    ModelMismatchError,
    NotFoundError,
)
from remote_synth._transport import InferenceClient, RetryPolicy
from remote_synth._transport.client import _TRANSLATIONS
from remote_synth._transport.models import ServedModel


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

    assert run(client(handle).models()) == [ServedModel(id="a")]
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


def test_timeouts_are_typed() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    c = client(handle, retry=RetryPolicy(deadline=0))
    with pytest.raises(APITimeoutError):
        run(c.complete({"prompt": ["a"]}))


def test_wrong_choice_count_and_non_json_are_malformed_answers() -> None:
    c = client(lambda r: httpx.Response(200, json={"choices": []}), retry=RetryPolicy(deadline=0))
    with pytest.raises(MalformedResponseError, match="0 choices for 2 prompts"):
        run(c.complete({"prompt": ["a", "b"]}))
    c = client(lambda r: httpx.Response(200, text='{"choices": [{"index": 0, "te'))
    with pytest.raises(MalformedResponseError, match="not JSON"):
        run(c.models())


def test_an_html_error_page_becomes_one_summarised_line() -> None:
    page = "<!DOCTYPE html>\n<html><head><title>502 Bad\n Gateway</title></head><body>" + "<p>x</p>" * 500
    c = client(lambda r: httpx.Response(502, text=page, headers={"content-type": "text/html"}))
    with pytest.raises(APIStatusError) as info:
        run(c.models())
    message = str(info.value)
    assert message == "GET /v1/models failed with HTTP 502: an HTML page (502 Bad Gateway)"
    assert info.value.endpoint == "GET /v1/models" and info.value.status_code == 502


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), ("0", 0.0), ("soon", None), (None, None)])
def test_retry_after_is_read_from_the_answer(header: str | None, seconds: float | None) -> None:
    headers = {"retry-after": header} if header is not None else {}
    c = client(lambda r: httpx.Response(429, json={"error": {"message": "slow down"}}, headers=headers))
    with pytest.raises(APIStatusError) as info:
        run(c.models())
    assert info.value.retry_after == seconds


def test_retry_after_as_an_http_date() -> None:
    from remote_synth._transport.client import retry_after_seconds

    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412500.0) == 0.0


def test_credentials_in_the_base_url_are_masked_in_messages() -> None:
    c = InferenceClient("http://user:s3cret@server:8000", transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    assert "s3cret" not in c.display_url and c.display_url.startswith("http://***@server:8000")


def test_health_is_zero_when_nothing_answers() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    assert run(client(handle).health()) == 0


@pytest.mark.parametrize("status", [404, 401, 403])  # no route; a router that passes no key there
def test_prompt_tokens_fall_back_to_usage_without_tokenize(status: int) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            return httpx.Response(status, json={"detail": "no"})
        return httpx.Response(200, json={"choices": [{"index": 0, "text": ""}], "usage": {"prompt_tokens": 42}})

    assert run(client(handle).count_prompt_tokens("m", "p")) == 42


def test_a_wrong_key_is_not_hidden_by_the_tokenize_fallback() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": "Unauthorized"}})

    with pytest.raises(AuthenticationError):
        run(client(handle).count_prompt_tokens("m", "p"))


@pytest.mark.parametrize(("status", "expected"), [(404, None), (401, None), (403, None), (500, APIStatusError)])
def test_metrics_kept_from_us_mean_no_metrics_but_a_failing_server_is_an_error(
    status: int, expected: type[Exception] | None
) -> None:
    c = client(lambda request: httpx.Response(status, text="no"))
    if expected is None:
        assert run(c.load()) is None
    else:
        with pytest.raises(expected):
            run(c.load())


@pytest.mark.parametrize("url", ["ftp://x", "not a url", "localhost:8000"])
def test_bad_base_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        InferenceClient(url)


def test_every_httpx_exception_is_translated() -> None:
    classes = [c for c in vars(httpx).values() if inspect.isclass(c) and issubclass(c, Exception)]
    sources = tuple(source for group, _ in _TRANSLATIONS for source in group)
    assert classes and all(issubclass(c, sources) for c in classes), [c for c in classes if not issubclass(c, sources)]


class _Drip(httpx.AsyncByteStream):
    """A body that comes a byte at a time, ``every`` seconds apart, forever (or ``limit`` bytes)."""

    def __init__(self, every: float, limit: int | None = None, chunk: bytes = b" ") -> None:
        self.every, self.limit, self.chunk = every, limit, chunk

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        sent = 0
        while self.limit is None or sent < self.limit:
            await asyncio.sleep(self.every)
            sent += len(self.chunk)
            yield self.chunk


def test_a_server_that_drips_its_body_cannot_hold_a_request() -> None:
    """Each byte comes within the read timeout; the whole request still ends at connect + read."""
    from remote_synth._transport import TimeoutPolicy

    c = client(lambda request: httpx.Response(200, stream=_Drip(0.05)), timeouts=TimeoutPolicy(connect=0.2, read=0.3),
               retry=RetryPolicy(deadline=0))  # fmt: skip
    started = asyncio.run(_timed(c.complete_many("adapter", ["p"], {})))
    assert isinstance(started[1], APITimeoutError) and "no complete answer within 0.5 s" in str(started[1])
    assert started[0] < 2.0


def test_an_endless_body_is_cut_at_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from remote_synth._transport import client as client_module

    monkeypatch.setattr(client_module, "MAX_BODY_BYTES", 10_000)
    c = client(lambda request: httpx.Response(200, stream=_Drip(0, chunk=b"x" * 1000)), retry=RetryPolicy(deadline=0))
    with pytest.raises(MalformedResponseError, match="larger than"):
        run(c.complete_many("adapter", ["p"], {}))


async def _timed(coro):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await coro
        error = None
    except Exception as exc:  # noqa: BLE001 - the test looks at it
        error = exc
    return loop.time() - started, error


@pytest.mark.parametrize(
    ("answer", "field"),
    [
        ({"choices": [{"index": 0, "text": 57}]}, "choices.0.text"),
        ({"choices": "nope"}, "choices"),
        ({"choices": [7]}, "choices.0"),
        ({"nothing": []}, "choices"),
        ({"choices": [{"text": "x"}], "usage": {"completion_tokens": -3}}, "usage.completion_tokens"),
    ],
)
def test_an_answer_of_the_wrong_shape_names_the_field(answer: dict, field: str) -> None:
    c = client(lambda request: httpx.Response(200, json=answer), retry=RetryPolicy(deadline=0))
    with pytest.raises(MalformedResponseError, match=f"POST /v1/completions: `{re.escape(field)}`"):
        run(c.complete_many("adapter", ["p"], {}))


def test_usage_is_shared_among_the_choices_by_length() -> None:
    answer = {"choices": [{"index": 0, "text": "aaa"}, {"index": 1, "text": "a"}], "usage": {"completion_tokens": 9}}
    c = client(lambda request: httpx.Response(200, json=answer))
    assert [x.tokens for x in run(c.complete_many("adapter", ["p", "q"], {}))] == [6, 3]


def answering(models: list[str | None]) -> tuple[Callable[[httpx.Request], httpx.Response], list[str]]:
    """Completions answered by ``models`` in turn (None: an answer that names no model)."""
    asked: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        asked.append(body["model"])
        answer: dict[str, object] = {"choices": [{"index": 0, "text": "x", "finish_reason": "stop"}]}
        model = models[min(len(asked), len(models)) - 1]
        if model is not None:
            answer["model"] = model
        return httpx.Response(200, json=answer)

    return handle, asked


def test_an_answer_from_another_model_is_refused_after_one_retry_naming_both() -> None:
    handle, asked = answering(["base-model"])  # a gateway that answers from the base model, every time
    c = client(handle, retry=RetryPolicy(deadline=60, initial_delay=0, max_delay=0))
    with pytest.raises(ModelMismatchError) as info:
        run(c.complete({"model": "nss-adapter", "prompt": ["p"]}))
    assert asked == ["nss-adapter", "nss-adapter"]  # retried once: another replica may be right
    error = info.value
    assert (error.asked, error.answered, error.attempts) == ("nss-adapter", "base-model", 2)
    assert "'nss-adapter'" in str(error) and "'base-model'" in str(error)


def test_one_wrong_replica_is_retried_and_an_answer_naming_no_model_is_taken() -> None:
    handle, asked = answering(["other-version", "nss-adapter"])
    c = client(handle, retry=RetryPolicy(deadline=60, initial_delay=0, max_delay=0))
    assert [x.text for x in run(c.complete({"model": "nss-adapter", "prompt": ["p"]}))] == ["x"]
    assert len(asked) == 2
    handle, asked = answering([None])  # a gateway that drops the field: nothing to check
    assert [x.text for x in run(client(handle).complete({"model": "nss-adapter", "prompt": ["p"]}))] == ["x"]
