"""The retry policy: which failures pass by themselves, how long to wait, and when to give up.

A shared server has bad minutes: a restart, a burst of 429s, a gateway that
drops connections. A job of hours should ride those out, so the budget is time,
not attempts: a request is retried until the server has been failing it for
``deadline`` seconds (10 min by default). Waits grow exponentially with jitter,
and a server's ``Retry-After`` is honoured (up to a cap).

What is retried, by what the transport's errors say:
- no answer (refused, reset, timed out) and an unreadable 200 (cut-off JSON): yes;
- 408, 429, 502, 503, 504, 529: yes;
- 500: at most ``server_error_retries`` times (a bug in the server tends to repeat);
- anything else, 400/401/403/404/422 included: never; the request itself is wrong.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import tenacity

from .._exceptions import APIConnectionError, APIError, APIStatusError, MalformedResponseError, ModelMismatchError

__all__ = ["RETRYABLE_STATUS", "RetryPolicy"]

logger = logging.getLogger("remote_synth.client")

RETRYABLE_STATUS = frozenset({408, 429, 502, 503, 504, 529})
"""Statuses that say "not now": the request is sent again until the deadline."""
SERVER_ERROR = 500

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True)
class RetryPolicy:
    """Retry by status within a time budget.

    ```python
    policy = RetryPolicy(deadline=600)
    async for attempt in policy.retrying():
        with attempt:
            return await send()
    ```
    """

    deadline: float = 600.0
    """Seconds a request may keep failing (from its first failure) before the job gives up."""
    initial_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0
    """A server's Retry-After is honoured up to this many seconds."""
    server_error_retries: int = 2
    """Retries of an HTTP 500."""
    mismatch_retries: int = 1
    """Retries of an answer from another model: once, in case one replica of several is wrong."""

    def __post_init__(self) -> None:
        if self.deadline < 0 or self.initial_delay < 0 or self.max_delay < self.initial_delay:
            raise ValueError("deadline and delays must be ≥ 0, and max_delay ≥ initial_delay")

    def retryable(self, exc: BaseException) -> bool:
        """Whether this failure may pass by itself (500s aside: see ``server_error_retries``)."""
        if isinstance(exc, (APIConnectionError, MalformedResponseError)):
            return True
        return isinstance(exc, APIStatusError) and (
            exc.status_code in RETRYABLE_STATUS or exc.status_code == SERVER_ERROR
        )

    def retrying(self, sleep: Sleep = asyncio.sleep, clock: Clock = time.monotonic) -> tenacity.AsyncRetrying:
        """A fresh retry loop for one request (it keeps that request's first failure and 500 count)."""
        budget = _Budget(self, clock)
        return tenacity.AsyncRetrying(
            retry=budget.should_retry,
            stop=budget.exhausted,
            wait=budget.wait,
            before_sleep=_log_retry,
            sleep=sleep,
            reraise=True,
        )


class _Budget:
    """One request's retry state: when it first failed, how many 500s, and the waits."""

    def __init__(self, policy: RetryPolicy, clock: Clock) -> None:
        self.policy = policy
        self.clock = clock
        self.started = clock()
        self.first_failure: float | None = None
        self.server_errors = 0
        self.mismatches = 0
        self._backoff = tenacity.wait_exponential_jitter(initial=policy.initial_delay, max=policy.max_delay)

    def should_retry(self, state: tenacity.RetryCallState) -> bool:
        """Called once per failed attempt: notes the attempt on the error, then decides by kind."""
        exc = state.outcome.exception() if state.outcome else None
        if exc is None:
            return False
        now = self.clock()
        if self.first_failure is None:
            self.first_failure = now
        if isinstance(exc, APIError):
            exc.attempts = state.attempt_number
            exc.elapsed = now - self.started
        if isinstance(exc, APIStatusError) and exc.status_code == SERVER_ERROR:
            self.server_errors += 1
            return self.server_errors <= self.policy.server_error_retries
        if isinstance(exc, ModelMismatchError):
            self.mismatches += 1
            return self.mismatches <= self.policy.mismatch_retries
        return self.policy.retryable(exc)

    def exhausted(self, state: tenacity.RetryCallState) -> bool:
        return self.first_failure is not None and self.clock() - self.first_failure >= self.policy.deadline

    def wait(self, state: tenacity.RetryCallState) -> float:
        """Retry-After when the server gave one (capped), else exponential with jitter; never past the deadline."""
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after if isinstance(exc, APIStatusError) else None
        if retry_after is not None:
            delay = min(retry_after, self.policy.max_retry_after) + random.uniform(0, self.policy.initial_delay)  # noqa: S311
        else:
            delay = float(self._backoff(state))
        assert self.first_failure is not None
        left = self.policy.deadline - (self.clock() - self.first_failure)
        return max(0.0, min(delay, left))


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    logger.warning("%s; attempt %d failed, retrying in %.1f s", _describe(exc), state.attempt_number, wait)


def _describe(exc: BaseException | None) -> str:
    """Endpoint and status (or the kind of failure), for one log line."""
    if isinstance(exc, APIStatusError):
        return f"{exc.endpoint or 'request'}: HTTP {exc.status_code}"
    if isinstance(exc, APIError):
        return str(exc.message)
    return f"{type(exc).__name__}: {exc}"
