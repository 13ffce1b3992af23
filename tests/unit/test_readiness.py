"""The one wait loop (``polling.until``) and running it from synchronous code (``run_blocking``)."""

import asyncio

import pytest

from remote_synth._transport.polling import until
from remote_synth._transport.readiness import run_blocking


def test_until_asks_once_a_second_and_never_sleeps_past_the_timeout() -> None:
    now = [0.0]
    slept: list[float] = []
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    async def never() -> bool:
        return False

    ready = asyncio.run(until(never, timeout=2.5, on_wait=waited.append, clock=lambda: now[0], sleep=sleep))
    assert ready is False and slept == [1.0, 1.0, 0.5] and waited == [0.0, 1.0, 2.0]


def test_until_returns_as_soon_as_the_probe_says_yes() -> None:
    answers = iter([False, False, True])

    async def probe() -> bool:
        return next(answers)

    async def sleep(seconds: float) -> None:
        return None

    assert asyncio.run(until(probe, timeout=60, sleep=sleep)) is True


def test_what_the_probe_raises_ends_the_wait() -> None:
    async def broken() -> bool:
        raise PermissionError("wrong key")

    with pytest.raises(PermissionError):
        asyncio.run(until(broken, timeout=60))


def test_run_blocking_works_inside_a_running_loop_as_in_a_notebook() -> None:
    async def answer() -> int:
        return 42

    async def notebook_cell() -> int:
        return run_blocking(answer())  # a synchronous call made while this thread runs a loop

    assert run_blocking(answer()) == 42
    assert asyncio.run(notebook_cell()) == 42


def test_run_blocking_hands_the_error_to_the_caller() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    async def notebook_cell() -> None:
        run_blocking(fails())

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(notebook_cell())
