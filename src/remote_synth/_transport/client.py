"""The HTTP side: vLLM's OpenAI-compatible endpoints, over one pooled httpx client.

We use httpx directly, not the openai SDK: the body is mostly vLLM extras
(``top_k``, ``min_p``, ``structured_outputs``…) that the SDK only passes as
``extra_body``; we want one explicit timeout, pool and concurrency policy, and
our own retry policy instead of the SDK's; and openai 3.x moved to ``httpx2``,
which would put a second HTTP stack into the client install. This module knows
HTTP and JSON, not records or DataFrames.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import html
import json
import logging
import re
import ssl
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field, ValidationError

from .._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    MalformedResponseError,
    ModelMismatchError,
    NotFoundError,
    ServerOverloadedError,
)
from .._urls import redact_url
from .lanes import Lanes
from .models import ServedModel, parse_models
from .replicas import ANSWERED, Replica, ReplicaSet
from .retry import RetryPolicy
from .tracing import Tracing
from .types import Completion, ServerLoad, completions_body

__all__ = ["InferenceClient", "TimeoutPolicy"]

logger = logging.getLogger("remote_synth.client")

KEEPALIVE_EXPIRY = 3.0
"""Seconds an idle pooled connection is kept; below the servers' usual 5 s keep-alive."""
#: vLLM's gauges of sequences being generated and queued (one per prompt, not per request).
RUNNING_GAUGE = "vllm:num_requests_running"
WAITING_GAUGE = "vllm:num_requests_waiting"


@dataclass(frozen=True)
class TimeoutPolicy:
    """Seconds per phase. A batch of long generations may take minutes before the first byte."""

    connect: float = 10.0
    read: float = 900.0
    write: float = 60.0
    probe: float = 5.0
    """For health and model-list probes, which must answer quickly."""

    @property
    def total(self) -> float:
        """The whole request, connect to last byte: ``read`` bounds each wait for bytes, so a server
        that drips its body (or never ends it) would hold a request forever without this."""
        return self.connect + self.read

    def httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=None)


@dataclass
class InferenceClient:
    """Async client for one server, or for several replicas of it (``_replicas``).

    ```python
    client = InferenceClient("http://gpu-host:8000", api_key="...")
    texts = await client.complete_many("my-adapter", ["prompt"] * 100, {"max_tokens": 512})
    await client.aclose()
    InferenceClient(["http://gpu-a:8000", "http://gpu-b:8000"], api_key=["key-a", "key-b"])
    ```
    """

    base_url: str | Sequence[str]
    """One base URL, or several replicas serving the same adapters (least in flight, failover)."""
    api_key: str | Sequence[str | None] | None = field(default=None, repr=False)
    """One key for every replica, or one per replica (in the order of ``base_url``)."""
    timeouts: TimeoutPolicy = field(default_factory=TimeoutPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_concurrency: int = 256
    """Requests in flight at once: the connection pool's size, and the cap of ``complete_many``.
    The generation engine sizes its own window (in prompts) below this."""
    prompts_per_request: int = 25
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra headers on every request (a gateway's tenant or routing headers)."""
    ca_bundle: str | Path | None = None
    """A PEM file of the CAs to trust for https (a private CA); None: ``SSL_CERT_FILE``, else certifi's."""
    transport: httpx.AsyncBaseTransport | None = None
    """For tests: a fake transport instead of the network."""
    tracing: Tracing = field(default_factory=Tracing)
    """Spans for requests, and the ``traceparent`` that carries them (``tracing.py``; off by default)."""

    def __post_init__(self) -> None:
        if self.max_concurrency < 1 or self.prompts_per_request < 1:
            raise ConfigError("max_concurrency and prompts_per_request must be at least 1")
        urls = [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)
        if not urls:
            raise ConfigError("give at least one base URL")
        keys = _keys_for(urls, self.api_key)
        self.base_urls = [_checked_url(url) for url in urls]
        self.base_url = self.base_urls[0]
        self._replicas = ReplicaSet(
            [Replica(redact_url(url), self._pool(url, key)) for url, key in zip(self.base_urls, keys, strict=True)],
            probe_timeout=self.timeouts.probe,
        )
        self._semaphore = asyncio.Semaphore(self.max_concurrency)

    def _pool(self, url: str, key: str | None) -> httpx.AsyncClient:
        headers = dict(self.headers)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        verify = self._verify()
        transport = self.transport
        if transport is None and not _env_proxies():  # with a proxy, httpx's own pool: it routes by them
            transport = self._lanes(verify)
        return httpx.AsyncClient(
            base_url=url,
            headers=headers,
            timeout=self.timeouts.httpx(),
            limits=self._limits(self.max_concurrency),  # httpx's own pool's, if it makes one
            transport=transport,
            event_hooks={"request": [_stamp_request_id]},
            verify=verify,
        )

    def _lanes(self, verify: ssl.SSLContext | bool) -> Lanes:
        """``max_concurrency`` connections in small pools (``lanes.py``: httpcore's cost per request
        grows with its pool). Idle connections expire before the server's keep-alive (uvicorn, and so
        vLLM: 5 s) closes them, or a reused connection can be closed under a request (a spurious
        connection error)."""
        context = httpx.create_ssl_context(verify)  # one for all lanes: each costs milliseconds

        def lane(size: int) -> httpx.AsyncBaseTransport:
            return httpx.AsyncHTTPTransport(verify=context, limits=self._limits(size))

        return Lanes(self.max_concurrency, lane)

    @staticmethod
    def _limits(connections: int) -> httpx.Limits:
        return httpx.Limits(
            max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=KEEPALIVE_EXPIRY
        )

    def _verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.ca_bundle)) if self.ca_bundle is not None else True

    async def aclose(self) -> None:
        await self._replicas.aclose()

    @property
    def sends_key(self) -> bool:
        """Whether any request carries an API key."""
        return any(_keys_for(self.base_urls, self.api_key))

    @property
    def display_url(self) -> str:
        """The base URL(s) for messages: any credentials in them are masked."""
        return ", ".join(replica.url for replica in self._replicas.replicas)

    @property
    def closed(self) -> bool:
        return all(replica.http.is_closed for replica in self._replicas.replicas)

    async def health(self) -> int:
        """Status of ``/health`` (0 when nothing answers); with replicas, the best one's (200 if any)."""
        statuses = await asyncio.gather(*(self._health(r) for r in self._replicas.replicas))
        return next((status for status in ANSWERED if status in statuses), max(statuses))

    async def _health(self, replica: Replica) -> int:
        try:
            with _translate("GET /health"):
                response = await replica.http.get("/health", timeout=self.timeouts.probe)
        except APIConnectionError:
            return 0
        self._replicas.answered(replica, response.status_code)
        return response.status_code

    async def models(self) -> list[ServedModel]:
        """What the server serves (``/v1/models``, read by ``parse_models``)."""
        return parse_models(await self._json("GET", "/v1/models", timeout=self.timeouts.probe))

    async def load_adapter(self, name: str, path: str) -> None:
        """``POST /v1/load_lora_adapter``: only on servers that allow runtime loading (else 404)."""
        await self._post_plain("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    async def unload_adapter(self, name: str) -> None:
        """``POST /v1/unload_lora_adapter``; 404 when the server does not hold it (or has no such route)."""
        await self._post_plain("/v1/unload_lora_adapter", {"lora_name": name})

    async def _post_plain(self, path: str, body: dict[str, Any]) -> None:
        """A POST whose success answer is plain text (vLLM's adapter routes), on every replica."""
        for replica in self._replicas.replicas:
            with _translate(f"POST {path}"):
                response = await replica.http.post(path, json=body, timeout=self.timeouts.read)
            if response.status_code >= 400:
                raise _status_error("POST", path, response)

    async def count_prompt_tokens(self, model: str, prompt: str) -> int:
        """Tokens of ``prompt`` as the server counts them (``/tokenize``, else a 1-token probe).

        A router or gateway may not pass ``/tokenize`` on (vllm-router forwards no key there,
        so a keyed replica answers 401): the probe goes where completions go.
        """
        try:
            data = await self._json("POST", "/tokenize", json={"model": model, "prompt": prompt})
            return int(data["count"])
        except (NotFoundError, AuthenticationError, KeyError, TypeError, ValueError):
            body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0}
            data = await self._json("POST", "/v1/completions", json=body)
            return int(data["usage"]["prompt_tokens"])

    async def tokenize(self, model: str, text: str) -> list[int]:
        """``text``'s token ids as the server's tokenizer makes them, without special tokens
        (``/tokenize``: NSS 0.1.16's time-series prompts are token ids built piece by piece)."""
        data = await self._json("POST", "/tokenize", json={"model": model, "prompt": text, "add_special_tokens": False})
        return _validated(_TokenizeAnswer, data, "POST /tokenize").tokens

    async def load(self) -> ServerLoad | None:
        """The server's running and queued sequences, or None when it publishes no vLLM metrics.

        Raises ``APIError`` when the server could not be asked this time.
        """
        readings = await asyncio.gather(
            *(self._load(r) for r in self._replicas.admitted or self._replicas.replicas), return_exceptions=True
        )
        loads = [r for r in readings if isinstance(r, ServerLoad)]
        if not loads:
            failure = next((r for r in readings if isinstance(r, BaseException)), None)
            if failure is not None:
                raise failure
            return None
        return ServerLoad(running=sum(x.running for x in loads), waiting=sum(x.waiting for x in loads))

    async def _load(self, replica: Replica) -> ServerLoad | None:
        with _translate("GET /metrics"):
            response = await replica.http.get("/metrics", timeout=self.timeouts.probe)
        if response.status_code in _NO_METRICS:
            return None
        if response.status_code >= 400:
            raise _status_error("GET", "/metrics", response)
        return parse_load(response.text)

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request on the replica with the fewest in flight; no answer or a 5xx takes it out for a while."""
        replica = await self._replicas.pick()
        replica.in_flight += 1
        what = f"{method} {path}"
        deadline = kwargs["timeout"] + self.timeouts.connect if "timeout" in kwargs else self.timeouts.total
        try:
            with _translate(what):
                response = await _bounded(replica.http, method, path, deadline, what, **kwargs)
        except APIConnectionError as exc:
            self._replicas.failed(replica, exc.message)
            raise
        finally:
            replica.in_flight -= 1
        if response.status_code >= 500:
            self._replicas.failed(replica, f"HTTP {response.status_code}")
        return response

    async def send_completions(self, body: dict[str, Any]) -> list[Completion]:
        """One ``/v1/completions`` attempt, no retry; choices in prompt order (sorted by ``index``)."""
        prompts = _count_prompts(body)
        with self.tracing.completions(str(body.get("model")), prompts) as trace_headers:
            data = await self._json("POST", "/v1/completions", json=body, headers=trace_headers)
        return _choices(data, expected=prompts, model=body.get("model"))

    async def complete(self, body: dict[str, Any]) -> list[Completion]:
        """``send_completions`` with the retry policy, at most ``max_concurrency`` at once."""
        async with self._semaphore:
            async for attempt in self.retry.retrying():
                with attempt:
                    return await self.send_completions(body)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def complete_many(self, model: str, prompts: Sequence[str], params: dict[str, Any]) -> list[Completion]:
        """All prompts, as concurrent requests of ``prompts_per_request`` prompts each, in order."""
        chunks = [
            list(prompts[i : i + self.prompts_per_request]) for i in range(0, len(prompts), self.prompts_per_request)
        ]
        bodies = [completions_body(model, chunk, params) for chunk in chunks]
        results = await asyncio.gather(*(self.complete(b) for b in bodies))
        return [c for chunk in results for c in chunk]

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._request(method, path, **kwargs)
        if response.status_code >= 400:
            raise _status_error(method, path, response)
        try:
            data = _decode_json(response.content)
        except ValueError:
            raise MalformedResponseError(
                f"{method} {path}: the server's answer is not JSON (cut off?)", endpoint=f"{method} {path}"
            ) from None
        if not isinstance(data, dict):
            raise MalformedResponseError(
                f"{method} {path}: unexpected answer shape ({type(data).__name__})", endpoint=f"{method} {path}"
            )
        return data


def _decode_json(content: bytes) -> Any:
    """``json.loads(content)``, as ``Response.json()`` does, at orjson's speed where orjson can read it.

    A completions answer is mostly JSON escaped inside strings, which ``json`` decodes at a fifth of
    orjson's speed (144 µs against 29 for 25 completions of 10 records: half the client's time
    per request). orjson reads UTF-8 only, and refuses
    NaN, infinities and lone surrogates; ``json`` reads those as it always did. Ints beyond 64 bits
    (orjson: a float) do not occur in an answer's fields.
    """
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return json.loads(content)


MAX_BODY_BYTES = 256 * 2**20
"""Most an answer may hold (25 completions of a long context are a few MB): an endless body is an error."""


async def _bounded(
    http: httpx.AsyncClient, method: str, path: str, deadline: float, what: str, **kwargs: Any
) -> httpx.Response:
    """One request, done within ``deadline`` seconds and ``MAX_BODY_BYTES`` (the body is read here)."""
    try:
        async with asyncio.timeout(deadline), http.stream(method, path, **kwargs) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():  # decoded (gzip…), so the cap is on what we hold
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise MalformedResponseError(
                        f"{what}: the answer is larger than {MAX_BODY_BYTES // 2**20} MiB", endpoint=what
                    )
    except TimeoutError:
        raise APITimeoutError(f"{what}: no complete answer within {deadline:g} s", endpoint=what) from None
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in ("content-encoding", "content-length")]
    return httpx.Response(response.status_code, headers=headers, content=bytes(body), request=response.request)


def _env_proxies() -> bool:
    """Whether the environment names an HTTP proxy, as httpx reads it (``HTTP_PROXY``, ``HTTPS_PROXY``,
    ``ALL_PROXY``; ``NO_PROXY=*`` turns them off). httpx routes by them only in its own transport."""
    found = urllib.request.getproxies()
    return any(found.get(scheme) for scheme in ("http", "https", "all")) and found.get("no", "").strip() != "*"


async def _stamp_request_id(request: httpx.Request) -> None:
    """Every request carries an ``X-Request-Id`` (kept if the caller set one): servers and gateways log it."""
    request.headers.setdefault("X-Request-Id", f"remote-synth-{uuid.uuid4().hex}")


def _checked_url(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    try:
        httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"base URL {redact_url(url)!r} is not a valid URL: {exc}") from None
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"base URL {redact_url(url)!r} must start with http:// or https://")
    return url


def _keys_for(urls: Sequence[str], keys: str | Sequence[str | None] | None) -> list[str | None]:
    if keys is None or isinstance(keys, str):
        return [keys] * len(urls)
    if len(keys) == 1:
        return [keys[0]] * len(urls)
    if len(keys) != len(urls):
        raise ConfigError(f"{len(keys)} API keys for {len(urls)} base URLs: give one key, or one per URL")
    return list(keys)


def parse_load(text: str) -> ServerLoad | None:
    """``ServerLoad`` from Prometheus text, reading only vLLM's two gauges (the rest can be 100s of kB)."""
    wanted = "\n".join(line for line in text.splitlines() if line.startswith((RUNNING_GAUGE, WAITING_GAUGE)))
    totals: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(wanted + "\n"):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    except ValueError:
        return None
    if RUNNING_GAUGE not in totals or WAITING_GAUGE not in totals:
        return None
    return ServerLoad(running=totals[RUNNING_GAUGE], waiting=totals[WAITING_GAUGE])


def _count_prompts(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    return (len(prompt) if isinstance(prompt, list) else 1) * int(body.get("n", 1))


class _Choice(BaseModel):
    index: int = 0
    text: str | None = None
    finish_reason: str | None = None


class _Usage(BaseModel):
    completion_tokens: int | None = Field(None, ge=0)


class _CompletionsAnswer(BaseModel):
    """What a ``/v1/completions`` answer must hold (more fields are allowed: servers add their own)."""

    choices: list[_Choice]
    usage: _Usage | None = None
    model: str | None = None
    """The model that answered (vLLM names the one asked for; a swap shows here only)."""


class _TokenizeAnswer(BaseModel):
    tokens: list[int]


_Answer = TypeVar("_Answer", bound=BaseModel)


def _validated(model: type[_Answer], data: object, what: str) -> _Answer:
    """``data`` as ``model``, or a ``MalformedResponseError`` naming the endpoint and the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise MalformedResponseError(f"{what}: `{where}`: {error['msg']}", endpoint=what) from None


def _choices(data: dict[str, Any], expected: int, model: object = None) -> list[Completion]:
    """The answer's completions in prompt order; an answer naming another ``model`` than the one
    asked for is refused (an answer that names none cannot be checked)."""
    what = "POST /v1/completions"
    answer = _validated(_CompletionsAnswer, data, what)
    if isinstance(model, str) and answer.model is not None and answer.model != model:
        raise ModelMismatchError(f"{what}: asked for model {model!r}, but {answer.model!r} answered",
                                 endpoint=what, asked=model, answered=answer.model)  # fmt: skip
    if len(answer.choices) != expected:
        raise MalformedResponseError(
            f"{what}: the server returned {len(answer.choices)} choices for {expected} prompts", endpoint=what
        )
    ordered = sorted(answer.choices, key=lambda c: c.index)
    texts = [c.text or "" for c in ordered]
    total = answer.usage.completion_tokens if answer.usage is not None else None
    tokens = _shares(total or 0, [len(t) for t in texts])
    return [
        Completion(text=t, finish_reason=c.finish_reason, tokens=n)
        for c, t, n in zip(ordered, texts, tokens, strict=True)
    ]


def _shares(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (equally when they are all 0), summing to ``total``."""
    if not weights:
        return []
    weights = weights if any(weights) else [1] * len(weights)
    whole = sum(weights)
    shares = [total * w // whole for w in weights]
    shares[-1] += total - sum(shares)
    return shares


_NO_METRICS = (401, 403, 404)
"""``/metrics`` answers: not there, or kept from us (a router forwards no key there; a completion
with a wrong key fails on its own)."""

_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    422: BadRequestError,
    429: ServerOverloadedError,
    503: ServerOverloadedError,
    529: ServerOverloadedError,
}


def _status_error(method: str, path: str, response: httpx.Response) -> APIStatusError:
    endpoint = f"{method} {path}"
    message = _server_message(response) or response.reason_phrase
    cls = _STATUS_ERRORS.get(response.status_code, APIStatusError)
    return cls(
        f"{endpoint} failed with HTTP {response.status_code}: {message}",
        status_code=response.status_code,
        body=response.text,
        endpoint=endpoint,
        retry_after=retry_after_seconds(response.headers.get("retry-after")),
    )


_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>|<h1[^>]*>(.*?)</h1>", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]+>")
MESSAGE_CHARS = 300


def _server_message(response: httpx.Response) -> str:
    """The server's own words, on one line: vLLM's JSON ``message``, an HTML page's title, or the text."""
    body = response.text
    try:
        detail = response.json()
    except ValueError:
        detail = None
    if isinstance(detail, dict):
        error = detail.get("error", detail.get("detail", detail))
        message = error.get("message", error) if isinstance(error, dict) else error
        return _one_line(str(message))
    if "html" in response.headers.get("content-type", "") or body.lstrip().lower().startswith(("<!doctype", "<html")):
        found = _HTML_TITLE.search(body)
        title = next((g for g in found.groups() if g), "") if found else ""
        summary = _one_line(html.unescape(_TAGS.sub(" ", title))) if title else "no title"
        return f"an HTML page ({summary})"
    return _one_line(body)


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 1] + "…"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# httpx → ours, most specific first; the last row catches the rest (the tests check completeness).
_TRANSLATIONS: list[tuple[tuple[type[Exception], ...], type[Exception]]] = [
    ((httpx.TimeoutException,), APITimeoutError),
    ((httpx.TransportError,), APIConnectionError),
    ((httpx.InvalidURL,), ConfigError),
    ((httpx.HTTPError, httpx.CookieConflict, httpx.StreamError), APIError),
]
_HTTPX_ERRORS = tuple(source for sources, _ in _TRANSLATIONS for source in sources)


@contextlib.contextmanager
def _translate(what: str) -> Iterator[None]:
    """The one place httpx exceptions become ours (with the original chained)."""
    try:
        yield
    except _HTTPX_ERRORS as exc:
        target = next(target for sources, target in _TRANSLATIONS if isinstance(exc, sources))
        message = f"{what}: {str(exc) or type(exc).__name__}"
        if issubclass(target, APIError):
            raise target(message, endpoint=what) from exc
        raise target(message) from exc
