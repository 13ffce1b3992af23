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
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import tenacity
from prometheus_client.parser import text_string_to_metric_families

from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    NotFoundError,
    ServerOverloadedError,
)

__all__ = ["Completion", "InferenceClient", "RetryPolicy", "ServerLoad", "TimeoutPolicy", "completions_body"]

logger = logging.getLogger("remote_synth.client")

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
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

    def httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=None)


@dataclass(frozen=True)
class RetryPolicy:
    """Retry what may pass by itself: no answer, 408/409/429 and 5xx; never other 4xx.

    A bounded number of attempts with exponential, jittered waits.
    """

    max_attempts: int = 3
    initial_delay: float = 0.5
    max_delay: float = 8.0

    def should_retry(self, exc: BaseException) -> bool:
        if isinstance(exc, APIConnectionError):
            return True
        return isinstance(exc, APIStatusError) and exc.status_code in RETRYABLE_STATUS

    def retrying(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> tenacity.AsyncRetrying:
        return tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=tenacity.wait_exponential_jitter(initial=self.initial_delay, max=self.max_delay),
            retry=tenacity.retry_if_exception(self.should_retry),
            before_sleep=_log_retry,
            sleep=sleep,
            reraise=True,
        )


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    logger.warning("request failed after attempt %d (%s: %s); retrying in %.1f s", state.attempt_number,
                   type(exc).__name__, exc, wait)  # fmt: skip


@dataclass(frozen=True)
class ServerLoad:
    """What vLLM's ``/metrics`` says about its scheduler (summed over engines and models)."""

    running: float
    """Sequences being generated."""
    waiting: float
    """Sequences queued for a slot."""


@dataclass(frozen=True)
class Completion:
    """One completion of a prompt."""

    text: str
    finish_reason: str | None = None


@dataclass
class InferenceClient:
    """Async client for one server.

    ```python
    client = InferenceClient("http://gpu-host:8000", api_key="...")
    texts = await client.complete_many("my-adapter", ["prompt"] * 100, {"max_tokens": 512})
    await client.aclose()
    ```
    """

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    timeouts: TimeoutPolicy = field(default_factory=TimeoutPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_concurrency: int = 256
    """Requests in flight at once: the connection pool's size, and the cap of ``complete_many``.
    The generation engine sizes its own window (in prompts) below this."""
    prompts_per_request: int = 25
    transport: httpx.AsyncBaseTransport | None = None
    """For tests: a fake transport instead of the network."""

    def __post_init__(self) -> None:
        if self.max_concurrency < 1 or self.prompts_per_request < 1:
            raise ConfigError("max_concurrency and prompts_per_request must be at least 1")
        self.base_url = self.base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[: -len("/v1")]
        try:
            httpx.URL(self.base_url)
        except httpx.InvalidURL as exc:
            raise ConfigError(f"base URL {self.base_url!r} is not a valid URL: {exc}") from None
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base URL {self.base_url!r} must start with http:// or https://")
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        # Idle connections expire before the server's keep-alive (uvicorn, and so vLLM: 5 s) closes
        # them, or a reused connection can be closed under a request (a spurious connection error).
        limits = httpx.Limits(
            max_connections=self.max_concurrency,
            max_keepalive_connections=self.max_concurrency,
            keepalive_expiry=KEEPALIVE_EXPIRY,
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=self.timeouts.httpx(),
            limits=limits,
            transport=self.transport,
        )
        self._semaphore = asyncio.Semaphore(self.max_concurrency)

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    async def health(self) -> int:
        """Status of ``/health`` (0 when nothing answers)."""
        try:
            with _translate("GET /health"):
                response = await self._http.get("/health", timeout=self.timeouts.probe)
        except APIConnectionError:
            return 0
        return response.status_code

    async def models(self) -> list[dict[str, Any]]:
        data = await self._json("GET", "/v1/models", timeout=self.timeouts.probe)
        return list(data.get("data", []))

    async def count_prompt_tokens(self, model: str, prompt: str) -> int:
        """Tokens of ``prompt`` as the server counts them (``/tokenize``, else a 1-token probe)."""
        try:
            data = await self._json("POST", "/tokenize", json={"model": model, "prompt": prompt})
            return int(data["count"])
        except (NotFoundError, KeyError, TypeError, ValueError):
            body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0}
            data = await self._json("POST", "/v1/completions", json=body)
            return int(data["usage"]["prompt_tokens"])

    async def load(self) -> ServerLoad | None:
        """The server's running and queued sequences, or None when it publishes no vLLM metrics.

        Raises ``APIError`` when the server could not be asked this time.
        """
        with _translate("GET /metrics"):
            response = await self._http.get("/metrics", timeout=self.timeouts.probe)
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise _status_error("GET", "/metrics", response)
        return parse_load(response.text)

    async def send_completions(self, body: dict[str, Any]) -> list[Completion]:
        """One ``/v1/completions`` attempt, no retry; choices in prompt order (sorted by ``index``)."""
        data = await self._json("POST", "/v1/completions", json=body)
        return _choices(data, expected=_count_prompts(body))

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
        with _translate(f"{method} {path}"):
            response = await self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise _status_error(method, path, response)
        try:
            data = response.json()
        except ValueError:
            raise APIError(f"{method} {path}: the server answered with something that is not JSON") from None
        if not isinstance(data, dict):
            raise APIError(f"{method} {path}: unexpected answer shape ({type(data).__name__})")
        return data


def completions_body(model: str, prompts: Sequence[str], params: Mapping[str, object]) -> dict[str, Any]:
    """A ``/v1/completions`` body: the sampling fields, the model, the prompts, one sample each."""
    return {**params, "model": model, "prompt": list(prompts), "n": 1}


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


def _choices(data: dict[str, Any], expected: int) -> list[Completion]:
    choices = data.get("choices")
    if not isinstance(choices, list) or len(choices) != expected:
        got = len(choices) if isinstance(choices, list) else "no"
        raise APIError(f"the server returned {got} choices for {expected} prompts")
    ordered = sorted(choices, key=lambda c: c.get("index", 0))
    return [Completion(text=c.get("text") or "", finish_reason=c.get("finish_reason")) for c in ordered]


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
    body = response.text
    try:
        detail = response.json()
        error = detail.get("error", detail)
        message = error.get("message") if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        message = body[:300]
    cls = _STATUS_ERRORS.get(response.status_code, APIStatusError)
    text = f"{method} {path} failed with HTTP {response.status_code}: {message or response.reason_phrase}"
    return cls(text, status_code=response.status_code, body=body)


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
        raise target(f"{what}: {str(exc) or type(exc).__name__}") from exc
