"""A ``JobSource`` for time-series runs: NSS's sliding window per group (reference §5), on the engine.

Each group continues from its own last records: one job at a time per group, its prompt (which
ends in the group's prefill) sent ``n`` times (10 down to 5 as more groups are active, at most 20
active). The best of the ``n`` completions is kept. Groups do not wait for one another as NSS's
rounds do: a group's next job goes out as soon as its last one is back, so the server stays full.

Deviations from NSS (``docs/deviations.md``), the bugs 7 and 9 of reference §8:
- stopping is per group only (patience over that group's batches): one bad first batch in one group
  no longer stops the whole run, and no cumulative mean across groups applies;
- a failed group's records are dropped, as NSS's documentation says (NSS kept its earlier ones);
- records past the stop timestamp are dropped (NSS kept the whole completing response), and a
  group whose records reach it is complete even if that batch was a bad one (NSS went on, past
  the stop, until the group failed);
- a record whose group column names another group is invalid;
- where the stop timestamp cannot end a group (none, or times of day that roll over midnight), the
  group completes at its expected record count, else at its share of ``num_records`` (NSS never
  ended it).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .._transport.types import Completion
from ..nss.batch import Batch, valid_fraction
from ..nss.processors import TIMESERIES, TimeSeriesDataProcessor
from ..nss.records import ParsedResponse
from ..nss.results import GenerationBatches, GenerationStatus
from ..nss.timeseries import MAX_ACTIVE_GROUPS, expected_records, prefill, samples_per_prompt, step_problem
from .accounting import CompletionLog, Logged, Progress, log_completions, logged_completions
from .sampling import shrink_for_prefill
from .scheduler import Job

__all__ = ["SeriesSpec", "TimeseriesJobs"]

logger = logging.getLogger("remote_synth.engine")

OUT_OF_ORDER = ("Out-of-order time step", TIMESERIES)
TRIMMED = ("Extra response trimmed for sliding window", TIMESERIES)
OTHER_GROUP = ("Record of another group", TIMESERIES)
RECENT = 3  # NSS's _prefill_context_size


@dataclass(frozen=True)
class SeriesSpec:
    """What the run's ``time_series`` settings say, in seconds."""

    interval: float | None
    start: float | None
    stop: float | None
    group_column: str | None
    """The group column as the records carry it (None: NSS's pseudo group, not in the records)."""


@dataclass
class _Group:
    key: str
    prefill: str
    last: float | None
    recent: list[dict[str, Any]] = field(default_factory=list)
    batches: list[Batch] = field(default_factory=list)
    bad_batches: int = 0
    valid: int = 0
    state: Literal["pending", "active", "completed", "failed"] = "pending"
    in_flight: bool = False


class TimeseriesJobs:
    """```python
    jobs = TimeseriesJobs(batches, processor, spec, prompt_for, params, initial_prefill, ...)
    await Scheduler(client, adapter, window).run(jobs)
    jobs.flush()    # groups still running keep what they have (failure, interrupt)
    ```"""

    def __init__(
        self,
        batches: GenerationBatches,
        processor: TimeSeriesDataProcessor,
        spec: SeriesSpec,
        prompt_for: Callable[[str], str],
        params: Mapping[str, object],
        initial_prefill: Mapping[str, str],
        *,
        target: int,
        threshold: float,
        patience: int,
        detailed_errors: bool = False,
        on_batch: Callable[[Progress], None] | None = None,
        log: CompletionLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.batches = batches
        self.processor = processor
        self.spec = spec
        self.prompt_for = prompt_for
        self.params = params
        self.target = target
        self.threshold = threshold
        self.patience = patience
        self.detailed_errors = detailed_errors
        self.on_batch = on_batch
        self.log = log
        self._clock = clock
        self._started = clock()
        room = params.get("max_tokens")
        self._room = room if isinstance(room, int) else 0
        """``max_tokens`` as fitted to the prompt without a prefill (0: not sent)."""
        self.groups = [self._new_group(str(key), text) for key, text in initial_prefill.items()]
        self._stop_usable = spec.stop is not None and not processor.rollover
        expected = expected_records(spec.start, spec.stop, spec.interval) if not processor.rollover else 0
        self._quota = expected or math.ceil(target / max(1, len(self.groups)))
        """Records that complete a group where the stop timestamp cannot say (times of day, none)."""
        self._jobs: dict[int, _Group] = {}

    def _new_group(self, key: str, initial: str) -> _Group:
        records = _records_in(initial)
        stamps = [self.processor.seconds(r) for r in records]
        last = stamps[-1] if stamps and stamps[-1] is not None else None
        # NSS's first prefill has a leading space and blank lines (bug 5): written again as trained
        return _Group(key, prefill(records[-RECENT:]) if records else initial, last, records[-RECENT:])

    # -- what the scheduler asks -------------------------------------------------------------

    @property
    def done(self) -> bool:
        return all(g.state in ("completed", "failed") for g in self.groups)

    def demand(self, outstanding: int) -> int:
        self._activate()
        n = samples_per_prompt(len(self._active))
        return n * sum(1 for g in self._active if not g.in_flight)

    def next_job(self, prompts: int) -> Job:
        group = next(g for g in self._active if not g.in_flight)
        group.in_flight = True
        count = max(1, min(samples_per_prompt(len(self._active)), prompts))
        params = dict(self.params)
        if self._room:  # fitted to the prompt without a prefill
            params["max_tokens"] = shrink_for_prefill(self._room, group.prefill)
        job = Job(prompts=[self.prompt_for(group.prefill)] * count, params=params)
        self._jobs[id(job)] = group
        return job

    def complete(self, job: Job, completions: Sequence[Completion]) -> None:
        group = self._jobs.pop(id(job))
        texts = [c.text for c in completions]
        if self.log is not None:
            log_completions(self.log, completions, keys=[group.key])  # kept before used; the group first
        self._use(group, texts)
        if self.log is not None:
            self.log.commit()

    def replay(self, entries: Iterable[Logged]) -> None:
        """Use an earlier run's completions (the journal's: the group, then the texts) again."""
        log, self.log = self.log, None
        by_key = {g.key: g for g in self.groups}
        try:
            for entry in entries:
                self._activate()
                self._use(by_key[entry.texts[0]], [c.text for c in logged_completions(entry, keys=1)])
        finally:
            self.log = log

    @property
    def _active(self) -> list[_Group]:
        return [g for g in self.groups if g.state == "active"]

    def _activate(self) -> None:
        """Fill the active slots from the pending groups, first come first."""
        free = MAX_ACTIVE_GROUPS - len(self._active)
        for group in self.groups:
            if free <= 0:
                break
            if group.state == "pending":
                group.state, free = "active", free - 1

    # -- one group's completions -------------------------------------------------------------

    def _use(self, group: _Group, texts: Sequence[str]) -> None:
        group.in_flight = False
        if group.state != "active":
            return
        responses = [self.processor(i, text) for i, text in enumerate(texts)]
        for response in responses:
            self._check_group_and_first_step(group, response)
        kept = max(range(len(responses)), key=lambda i: (len(responses[i].valid_records), -i)) if responses else 0
        best = responses[kept] if responses else ParsedResponse()
        # judged as written: records past the stop are good records, only not wanted
        metric = 1.0 - valid_fraction(len(best.valid_records), len(best.invalid_records))
        reached = self._keep_until_stop(best)
        batch = Batch()
        for i, response in enumerate(responses):
            if i != kept:
                response.valid_records, response.invalid_records = [], []
                response.errors.append(TRIMMED)
            batch.add_response(response)
        self._advance(group, responses[kept].valid_records if responses else [])
        self._judge(group, batch, metric, reached)

    def _check_group_and_first_step(self, group: _Group, response: ParsedResponse) -> None:
        """NSS's chronological check of a completion's first record against the group's last one,
        and the group column (which NSS did not check): failing records move to invalid."""
        records = response.valid_records
        column = self.spec.group_column
        if column is not None:
            others = [r for r in records if str(r.get(column)) != group.key]
            if others:
                _move(response, others, OTHER_GROUP)
                records = response.valid_records
        if not records or self.spec.interval is None or group.last is None:
            return
        first = self.processor.seconds(records[0])
        rollover = self.processor.rollover
        if first is None or step_problem(group.last, first, self.spec.interval, rollover=rollover) is not None:
            _move(response, list(records), OUT_OF_ORDER)

    def _keep_until_stop(self, response: ParsedResponse) -> bool:
        """Whether the kept completion reaches the stop timestamp; records past it are dropped."""
        stop = self.spec.stop
        if stop is None or not self._stop_usable:
            return False
        stamps = [self.processor.seconds(r) for r in response.valid_records]
        reached = any(s is not None and s >= stop for s in stamps)
        response.valid_records = [
            r for r, s in zip(response.valid_records, stamps, strict=True) if s is None or s <= stop
        ]
        return reached

    def _advance(self, group: _Group, records: list[dict[str, Any]]) -> None:
        """The window moves on whatever the batch's fate (as NSS: even a bad batch's records)."""
        if not records:
            return
        group.recent = (group.recent + records)[-RECENT:]
        group.prefill = prefill(group.recent)
        last = self.processor.seconds(records[-1])
        group.last = last if last is not None else group.last

    def _judge(self, group: _Group, batch: Batch, metric: float, reached_stop: bool) -> None:
        """NSS's per-group rule on the kept completion's invalid fraction (``metric``), except that a
        group whose records reach the stop is complete: nothing after it is wanted (NSS went on
        past it, into times the adapter never saw, until the group failed)."""
        batch.log_summary(detailed_errors=self.detailed_errors)
        at_stop = reached_stop or (self._stop_usable and group.last is not None and group.last >= (self.spec.stop or 0))
        if metric >= self.threshold and not at_stop:
            group.bad_batches += 1
            if group.bad_batches >= self.patience:
                self._finish(group, "failed")
                return
            group.batches.append(batch)
        else:
            group.bad_batches = 0
            group.batches.append(batch)
            group.valid += batch.num_valid_records
            if at_stop or (not self._stop_usable and group.valid >= self._quota):
                self._finish(group, "completed")
        self._report()

    def _finish(self, group: _Group, state: Literal["completed", "failed"]) -> None:
        group.state = state
        if state == "failed":
            kept = sum(b.num_valid_records for b in group.batches)
            logger.warning("group %s failed after %d batches in a row above the invalid threshold; its %d records "
                           "are dropped", group.key, self.patience, kept)  # fmt: skip
            group.batches = []
            return
        self._add(group)

    def _add(self, group: _Group) -> None:
        for batch in group.batches:
            self.batches.add_batch(batch, judge=False)  # the groups judged themselves (bug 7)
        group.batches = []

    def flush(self) -> None:
        """Groups still running keep what they accepted (a failure, an interrupt, or the end)."""
        for group in self.groups:
            if group.state == "active":
                self._add(group)
        if self.done and self.batches.status is GenerationStatus.IN_PROGRESS:
            failed = sum(g.state == "failed" for g in self.groups)
            if self.batches.num_valid_records == 0:
                self.batches.status = GenerationStatus.STOP_NO_RECORDS
            elif not failed:
                self.batches.status = GenerationStatus.COMPLETE

    def _report(self) -> None:
        valid = self.batches.num_valid_records + sum(sum(b.num_valid_records for b in g.batches) for g in self.groups)
        invalid = self.batches.num_invalid_records + sum(
            sum(b.num_invalid_records for b in g.batches) for g in self.groups
        )
        prompts = self.batches.num_prompts + sum(sum(b.num_prompts for b in g.batches) for g in self.groups)
        progress = Progress(batch=sum(len(g.batches) for g in self.groups) + self.batches.num_batches, valid=valid,
                            invalid=invalid, target=self.target, prompts=prompts,
                            elapsed=self._clock() - self._started)  # fmt: skip
        if self.on_batch is not None:
            self.on_batch(progress)


def _move(response: ParsedResponse, records: list[dict[str, Any]], error: tuple[str, str]) -> None:
    """Valid records that fail a check across completions become invalid, as JSON, with ``error``."""
    moving = {id(r) for r in records}
    response.valid_records = [r for r in response.valid_records if id(r) not in moving]
    response.invalid_records.extend(json.dumps(r, ensure_ascii=False) for r in records)
    response.errors.extend([error] * len(records))


def _records_in(text: str) -> list[dict[str, Any]]:
    """The JSON records of a prefill (NSS's initial one has a leading space and blank lines)."""
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                records.append(value)
    return records
