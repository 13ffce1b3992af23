"""The yield judged from when requests come back: the long completions still out count for more."""

from __future__ import annotations

import random
from typing import Any

import pytest
from fakes.sim_vllm import SCHEMA

from remote_synth._engine import TabularJobs
from remote_synth._engine.yield_estimate import YieldEstimate
from remote_synth._transport.types import Completion
from remote_synth.nss import GenerationBatches, TabularDataProcessor


def records(n: int) -> Completion:
    return Completion(text='{"n":1,"c":"x"}\n' * n)


def test_with_everything_back_it_is_the_plain_mean() -> None:
    estimate = YieldEstimate()
    for key, (latency, found) in enumerate([(0.1, 2), (0.5, 4), (2.0, 9), (7.0, 5)]):
        estimate.sent(key, 1, 0.0)
        estimate.returned(key, found, latency)
    assert estimate.mean(10.0) == pytest.approx(5.0)
    assert estimate.in_flight_credit(10.0) == 0.0


def test_nothing_back_means_no_estimate() -> None:
    estimate = YieldEstimate()
    estimate.sent("a", 5, 0.0)
    assert estimate.mean(1.0) is None and estimate.in_flight_credit(1.0) == 0.0


def test_where_records_do_not_follow_length_it_stays_the_plain_mean() -> None:
    rng = random.Random(4)
    estimate = YieldEstimate()
    for key in range(300):
        estimate.sent(key, 1, 0.0)
    for key in range(200):
        estimate.returned(key, 4, rng.lognormvariate(-1, 0.6))
    assert estimate.mean(0.5) == pytest.approx(4.0)
    assert estimate.in_flight_credit(0.5) == pytest.approx(100 * 4.0)


def test_a_prompt_out_long_is_credited_with_what_those_that_took_as_long_brought() -> None:
    estimate = YieldEstimate()
    for key in range(20):
        estimate.sent(key, 1, 0.0)
        estimate.returned(key, 2 if key < 10 else 6, 0.1 if key < 10 else 1.0)
    estimate.sent("fresh", 1, 100.0)
    assert estimate.in_flight_credit(100.0) == pytest.approx(4.0)  # just sent: the mean
    assert estimate.in_flight_credit(100.5) == pytest.approx(6.0)  # out longer than the short ones
    assert estimate.in_flight_credit(100.5, at_least=7.0) == pytest.approx(7.0)


def test_the_first_back_are_short_and_the_rest_is_judged_by_the_longest_of_them() -> None:
    """100 prompts sent at once; the 20 back by 0.3 s brought more the longer they took (2 to 5 records).
    The 80 still out have taken longer than any of them: they count at the longest ones' yield."""
    estimate = YieldEstimate()
    for key in range(100):
        estimate.sent(key, 1, 0.0)
    for key in range(20):
        estimate.returned(key, 2 + key // 5, 0.1 + 0.01 * key)
    plain = sum(2 + key // 5 for key in range(20)) / 20
    longest = sum(2 + key // 5 for key in range(10, 20)) / 10
    assert estimate.mean(0.3) > plain
    # out longer than any back: counted at the longest ones' yield (10 or so, as the latency bins fall)
    assert plain < estimate.in_flight_credit(0.5) / 80 <= longest


def clocked_jobs(target: int, now: list[float], most_records: int | None = None) -> TabularJobs:
    batches = GenerationBatches(target_num_records=target, invalid_fraction_threshold=0.8, patience=3)
    return TabularJobs(batches, TabularDataProcessor(SCHEMA), "P", {}, target, first_job_prompts=1,
                       tail_jobs=0, most_records=most_records, clock=lambda: now[0])  # fmt: skip


def test_a_job_is_not_sized_from_the_short_completions_that_come_back_first() -> None:
    """As on a real server: 100 prompts out at t=0, the first 20 back are the short ones (2-5 records);
    the plain mean (3.5) would send 2000/3.5 prompts in all; the long ones still out bring more."""
    now = [0.0]
    source = clocked_jobs(2000, now)
    out: list[Any] = [source.next_job(1) for _ in range(100)]
    for i in range(20):
        now[0] = 0.1 + 0.01 * i
        source.complete(out.pop(0), [records(2 + i // 5)])
    plain_total = 2000 / (source.valid / source.used)
    more = source.demand(outstanding=len(out))
    assert source.used + len(out) + more < 0.9 * plain_total


def test_prompts_out_that_cover_what_is_left_bring_no_more_than_the_hedge() -> None:
    """Near the end the prompts out, at what they are expected to bring, cover the target: nothing more
    goes out (the hedge is a share of those needed, not of those out, or it would feed itself)."""
    now = [0.0]
    source = clocked_jobs(1000, now)
    sent = [source.next_job(1) for _ in range(40)]
    now[0] = 1.0
    for job in sent[:20]:
        source.complete(job, [records(4)])
    out = sent[20:]  # 20 out, 80 records expected of them, 920 still to find
    assert source.demand(outstanding=len(out)) > 200
    for job in [source.next_job(1) for _ in range(220)]:
        source.complete(job, [records(4)])  # 240 back: 960 records, 40 to go, the 20 out bring 80
    now[0] = 1.2
    assert source.demand(outstanding=len(out)) == 0


def test_the_credit_is_the_sum_over_every_prompt_out_however_the_calls_interleave() -> None:
    """The credit of prompts sent before the current tick is kept between calls; it must stay what
    summing every request still out by its own age gives."""
    rng = random.Random(9)
    estimate, out, now = YieldEstimate(), {}, 0.0
    for key in range(2000):
        now += rng.choice([0.0, 0.0, 0.001, 0.02, 0.07])
        if out and rng.random() < 0.4:
            gone = rng.choice(sorted(out))
            estimate.returned(gone, rng.randint(0, 12), now)
            del out[gone]
        else:
            out[key] = rng.randint(1, 25)
            estimate.sent(key, out[key], now)
        at_least = rng.choice([0.0, 3.0])
        credit = estimate.in_flight_credit(now, at_least)
        if estimate.mean(now) is not None:
            fresh = YieldEstimate.__new__(YieldEstimate)
            fresh.__dict__.update(estimate.__dict__, _earlier=None)
            assert credit == pytest.approx(fresh.in_flight_credit(now, at_least))
        assert estimate.out == sum(out.values())


@pytest.mark.parametrize("start", [0.024, 0.026])
def test_prompts_still_out_are_not_taken_for_ended_by_rounding(start: float) -> None:
    """Ages are kept to a tick (0.05 s): the prompts still out were sent with those that came back, so they
    have been out at least as long, and count as longer than any of them, wherever the tick falls."""
    estimate = YieldEstimate()
    for key in range(20):
        estimate.sent(key, 1, start)
    for key in range(10):
        estimate.returned(key, 1, start + 0.1)
    for key in (10, 11):
        estimate.returned(key, 5, start + 0.36)
    now = start + 0.36
    # Kaplan-Meier: half back at 0.1 s, then 2 of the 10 still at risk at 0.36 s; the 8 out, beyond
    # the longest seen, count at the yield of the longest bins holding ten or more ((10 x 1 + 2 x 5) / 12).
    tail = 20 / 12
    assert estimate.mean(now) == pytest.approx(0.5 * 1 + 0.1 * 5 + 0.4 * tail)
    # Credited by their age (to the tick), they may have ended with those back at 0.36 s or after.
    assert estimate.in_flight_credit(now) == pytest.approx(8 * (0.1 * 5 + 0.4 * tail) / 0.5)


def returned_at(points: list[tuple[float, int]]) -> YieldEstimate:
    """Requests of one prompt each, sent at 0 and back at each (latency, records)."""
    estimate = YieldEstimate()
    for key, (latency, n) in enumerate(points):
        estimate.sent(key, 1, 0.0)
        estimate.returned(key, n, latency)
    return estimate


def test_records_that_rise_with_latency_are_told_from_records_that_do_not() -> None:
    rising = [(0.1 + 0.01 * i, 2 + i // 5) for i in range(20)]
    assert returned_at(rising).follows_latency()
    assert returned_at([(0.1 * i, 3 * i) for i in range(1, 5)]).follows_latency()  # exactly on a line
    # no slope at all: as many records at either end, or latencies all alike, or too few points
    assert not returned_at([(0.1 + 0.01 * i, 4 + (i % 2) * 2) for i in range(20) if i not in (0, 19)]).follows_latency()
    assert not returned_at([(0.1 + 0.01 * i, 4 + (i % 4 in (0, 3)) * 2) for i in range(20)]).follows_latency()
    assert not returned_at([(0.5, n) for n in range(20)]).follows_latency()
    assert not returned_at(rising[:2]).follows_latency()
    assert not returned_at([(0.1 + 0.01 * i, 9 - i // 5) for i in range(20)]).follows_latency()  # falling
    # noise around a small rise: not enough to tell
    rng = random.Random(3)
    noisy = [(0.1 + 0.01 * i, 5 + (i > 10) + rng.choice((-3, 3))) for i in range(12)]
    assert not returned_at(noisy).follows_latency()


def test_a_wave_sized_at_the_bound_is_not_replaced_while_records_rise_with_latency() -> None:
    """200 prompts out cover 2,000 records if a completion brings its 10 (the run's bound). The first 20
    back are the short ones: 4-7 records, rising with latency. Until a server's worth is back, what is
    sent in all stays within that wave and its hedge (or half the need): a completion back is not
    replaced, or a one-wave job sends a second. Where records do not follow latency, what is out
    keeps to the server's size and a quarter, as without the bound."""
    now = [0.0]
    source = clocked_jobs(2000, now, most_records=10)
    out: list[Any] = [source.next_job(1) for _ in range(200)]
    for i in range(20):
        now[0] = 0.1 + 0.01 * i
        source.complete(out.pop(0), [records(4 + i // 5)])
    # the need judged (before the young limit, which holds until the wave is back whatever the server shows)
    need = source.used + source._judged_need(len(out))
    assert need > 300  # judged from the short ones; half of it is less than the wave
    more = source.demand(outstanding=len(out), capacity=200)
    assert source.used + len(out) + more == int(200 * 1.035)  # the wave and its hedge

    flat = clocked_jobs(2000, now, most_records=10)
    out = [flat.next_job(1) for _ in range(200)]
    for i in range(20):
        now[0] = 0.1 + 0.01 * i
        flat.complete(out.pop(0), [records(4)])
    assert len(out) + flat.demand(outstanding=len(out), capacity=200) == 250
