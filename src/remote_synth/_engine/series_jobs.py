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

Runs saved by NSS 0.1.16 (``SeriesSpec.rules == "0.1.16"``) get that release's protocol: token-id
prompts (``TokenPrompts``) that start each group at a partial first record and continue from the
model's own text; a group also fails after ``patience`` batches that move its time on by nothing;
a failed group's records are counted as invalid ("Time-series group failed before completing");
and the job ends COMPLETE only when every group did, else INCOMPLETE (a warning, never an error).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .._exceptions import GenerationError
from .._transport.types import Completion
from ..nss.batch import Batch, valid_fraction
from ..nss.flexible import FlexibleRules, Kept, select
from ..nss.processors import TIMESERIES, TimeSeriesDataProcessor
from ..nss.records import ParsedResponse, extract_records, sanitize_text
from ..nss.results import GenerationBatches, GenerationStatus
from ..nss.timeseries import (
    MAX_ACTIVE_GROUPS,
    expected_records,
    history,
    prefill,
    prompt_token_ids,
    samples_per_prompt,
    step_problem,
)
from .accounting import CompletionLog, Logged, Progress, log_completions, logged_completions
from .flexible_audit import FlexibleAudit, GroupTally
from .sampling import shrink_for_prefill
from .scheduler import Job

__all__ = ["GroupStart", "SeriesPrompts", "SeriesSpec", "TextPrefills", "TimeseriesJobs", "TokenPrompts"]

logger = logging.getLogger("remote_synth.engine")

OUT_OF_ORDER = ("Out-of-order time step", TIMESERIES)
TRIMMED = ("Extra response trimmed for sliding window", TIMESERIES)
OTHER_GROUP = ("Record of another group", TIMESERIES)
GROUP_FAILED = ("Time-series group failed before completing", TIMESERIES)
RECENT = 3  # NSS's _prefill_context_size
Rules = Literal["48a8f5c", "0.1.16"]


@dataclass(frozen=True)
class SeriesSpec:
    """What the run's ``time_series`` settings say, in seconds."""

    interval: float | None
    start: float | None
    stop: float | None
    group_column: str | None
    """The group column as the records carry it (None: NSS's pseudo group, not in the records)."""
    rules: Rules = "48a8f5c"
    """Which NSS's end-of-group and end-of-job rules apply (the run directory's protocol)."""
    flexible: FlexibleRules | None = None
    """NSS 0.1.16's flexible mode: groups end at their marker (``nss/flexible.py``)."""


@dataclass(frozen=True)
class GroupStart:
    """Where a group starts: its journal key, its id as records carry it, and its first context."""

    key: str
    group_id: object
    prefill: str = ""
    """48a8f5c: the group's first records, as NSS's training wrote them (``initial_prefill``)."""
    prefix: str | None = None
    """0.1.16: the partial first record the first completion continues (``{"g":"a","ts":1,"``)."""


@dataclass
class _Group:
    key: str
    group_id: object
    prefill: str
    last: float | None
    recent: list[dict[str, Any]] = field(default_factory=list)
    prefix: str | None = None
    """0.1.16: the partial first record, until the group's first record is accepted."""
    texts: list[str] = field(default_factory=list)
    """0.1.16: the last accepted records exactly as the model wrote them (the next prompt's context)."""
    batches: list[Batch] = field(default_factory=list)
    bad_batches: int = 0
    stalled: int = 0
    """0.1.16: batches in a row that moved the group's time on by nothing."""
    valid: int = 0
    state: Literal["pending", "active", "completed", "failed"] = "pending"
    in_flight: bool = False
    last_source: float | None = None
    """Flexible mode: the source timestamp of the group's last accepted row."""
    prompt_tokens: int = 0
    """Tokens of the group's last prompt (token-id prompts only)."""
    tally: GroupTally | None = None
    """Flexible mode: the group's counts for the audit files."""


class SeriesPrompts(Protocol):
    """How a group's state becomes a request (text with a prefill, or token ids)."""

    def job(self, group: _Group, count: int, params: Mapping[str, object]) -> Job:
        """``count`` samples of the group's next prompt."""


@dataclass(frozen=True)
class TextPrefills:
    """48a8f5c: the prompt text ending in the group's prefill; ``max_tokens`` shrunk by its bytes."""

    prompt_for: Callable[[str], str]
    room: int
    """``max_tokens`` as fitted to the prompt without a prefill (0: not sent)."""

    def job(self, group: _Group, count: int, params: Mapping[str, object]) -> Job:
        sent = dict(params)
        if self.room:
            sent["max_tokens"] = shrink_for_prefill(self.room, group.prefill)
        return Job(prompts=[self.prompt_for(group.prefill)] * count, params=sent)


Tokenize = Callable[[str], Awaitable[list[int]]]


@dataclass
class TokenPrompts:
    """NSS 0.1.16: token ids, ``prompt + [BOS] + context``, each piece tokenized on its own as in
    training (a string joined first would merge tokens across the boundary: reference §8 bug 5).

    The pieces are tokenized by the server (``/tokenize``) when a job is sent, each text once.
    ``max_tokens`` is what the context leaves after the prompt, at most the job's own.
    """

    prompt: str
    prompt_special: tuple[list[int], list[int]]
    """Ids before and after the prompt's own (its configured BOS and EOS)."""
    bos_token_id: int
    tokenize: Tokenize
    context: int
    """Tokens a request may span, prompt included (the run's ``max_seq_length``, or the server's)."""
    _ids: dict[str, list[int]] = field(default_factory=dict)

    def job(self, group: _Group, count: int, params: Mapping[str, object]) -> Job:
        segments = [group.prefix] if group.prefix is not None else history(group.texts)
        readable = self.prompt + "".join(segments)

        async def prepare() -> Job:
            ids = await self.prompt_ids(segments)
            room = self.context - len(ids)
            if room < 1:
                raise GenerationError(f"a time-series prompt of {len(ids)} tokens leaves no room in the model's "
                                      f"context ({self.context} tokens)")  # fmt: skip
            sent = dict(params)
            limit = sent.get("max_tokens")
            sent["max_tokens"] = min(limit, room) if isinstance(limit, int) else room
            group.prompt_tokens = len(ids)
            return Job(prompts=[ids] * count, params=sent)

        return Job(prompts=[readable] * count, params=params, prepare=prepare)

    async def prompt_ids(self, segments: Sequence[str]) -> list[int]:
        before, after = self.prompt_special
        prompt = [*before, *await self._tokens(self.prompt), *after]
        return prompt_token_ids(prompt, self.bos_token_id, [await self._tokens(s) for s in segments])

    async def _tokens(self, text: str) -> list[int]:
        if text not in self._ids:
            if len(self._ids) > 4096:  # a group's context moves on: old records are not asked again
                self._ids = {self.prompt: self._ids[self.prompt]} if self.prompt in self._ids else {}
            self._ids[text] = await self.tokenize(text)
        return self._ids[text]


class TimeseriesJobs:
    """```python
    jobs = TimeseriesJobs(batches, processor, spec, TextPrefills(prompt_for, room), params, starts, ...)
    await Scheduler(client, adapter, window).run(jobs)
    jobs.flush()    # groups still running keep what they have (failure, interrupt)
    ```"""

    def __init__(
        self,
        batches: GenerationBatches,
        processor: TimeSeriesDataProcessor,
        spec: SeriesSpec,
        prompts: SeriesPrompts,
        params: Mapping[str, object],
        starts: Sequence[GroupStart],
        *,
        target: int,
        threshold: float,
        patience: int,
        detailed_errors: bool = False,
        on_batch: Callable[[Progress], None] | None = None,
        log: CompletionLog | None = None,
        audit: FlexibleAudit | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.batches = batches
        self.processor = processor
        self.spec = spec
        self.prompts = prompts
        self.params = params
        self.target = target
        self.threshold = threshold
        self.patience = patience
        self.detailed_errors = detailed_errors
        self.on_batch = on_batch
        self.log = log
        self.audit = audit
        """Flexible mode: what NSS 0.1.16 writes beside the output (``artifacts()``)."""
        self._clock = clock
        self._started = clock()
        self.groups = [self._new_group(start) for start in starts]
        self._stop_usable = spec.stop is not None and not processor.rollover
        expected = expected_records(spec.start, spec.stop, spec.interval) if not processor.rollover else 0
        if spec.rules == "0.1.16" and spec.start is not None and spec.start == spec.stop:
            expected = 1  # NSS 0.1.16: a range of one instant is one record
        self._quota = expected or math.ceil(target / max(1, len(self.groups)))
        """Records that complete a group where the stop timestamp cannot say (times of day, none)."""
        self._quota_ends_groups = not self._stop_usable and spec.flexible is None
        """A flexible group ends at its marker or the cap only."""
        self._jobs: dict[int, _Group] = {}

    def _new_group(self, start: GroupStart) -> _Group:
        if start.prefix is not None:
            tally = self.audit.group(start.key, start.group_id) if self.audit is not None else None
            return _Group(start.key, start.group_id, "", None, prefix=start.prefix, tally=tally)
        records = _records_in(start.prefill)
        stamps = [self.processor.seconds(r) for r in records]
        last = stamps[-1] if stamps and stamps[-1] is not None else None
        # NSS's first prefill has a leading space and blank lines (bug 5): written again as trained
        text = prefill(records[-RECENT:]) if records else start.prefill
        return _Group(start.key, start.group_id, text, last, records[-RECENT:])

    # -- what the scheduler asks -------------------------------------------------------------

    @property
    def done(self) -> bool:
        return all(g.state in ("completed", "failed") for g in self.groups)

    def demand(self, outstanding: int, capacity: int = 0) -> int:
        self._activate()
        n = samples_per_prompt(len(self._active))
        return n * sum(1 for g in self._active if not g.in_flight)

    def job_size(self, prompts: int) -> int:
        """A group's samples (fewer while many groups are active), at most ``prompts``."""
        return max(1, min(samples_per_prompt(len(self._active)), prompts))

    def next_job(self, prompts: int) -> Job:
        group = next(g for g in self._active if not g.in_flight)
        group.in_flight = True
        count = self.job_size(prompts)
        job = self.prompts.job(group, count, self.params)
        self._jobs[id(job)] = group
        return job

    def complete(self, job: Job, completions: Sequence[Completion]) -> None:
        group = self._jobs.pop(id(job))
        if self.log is not None:
            log_completions(self.log, completions, keys=[group.key])  # kept before used; the group first
        self._use(group, completions)
        if self.log is not None:
            self.log.commit()

    def replay(self, entries: Iterable[Logged]) -> None:
        """Use an earlier run's completions (the journal's: the group, then the texts) again."""
        log, self.log = self.log, None
        by_key = {g.key: g for g in self.groups}
        try:
            for entry in entries:
                self._activate()
                self._use(by_key[entry.texts[0]], logged_completions(entry, keys=1))
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

    def _use(self, group: _Group, completions: Sequence[Completion]) -> None:
        group.in_flight = False
        if group.state != "active":
            return
        if group.tally is not None and self.audit is not None:
            self.audit.request(group.tally, completions, group.prompt_tokens)
        texts = [(group.prefix or "") + c.text for c in completions]  # 0.1.16: the prefix starts the record
        responses = [self.processor(i, text) for i, text in enumerate(texts)]
        # 0.1.16's history is each record's own text; mapped before the checks move any record
        speaks_016 = self.spec.rules == "0.1.16"
        written = [_record_texts(r, t) for r, t in zip(responses, texts, strict=True)] if speaks_016 else []
        kept, metric, end = self._choose(group, responses)
        batch = Batch()
        for completion in completions:
            batch.finish_reasons[completion.finish_reason or "unknown"] += 1
            batch.num_completion_tokens += completion.tokens
        for i, response in enumerate(responses):
            if i != kept:
                response.valid_records, response.invalid_records = [], []
                response.errors.append(TRIMMED)
            batch.add_response(response)
        previous = group.last
        accepted = responses[kept].valid_records if responses else []
        self._advance(group, accepted, [written[kept][id(r)] for r in accepted] if written else [])
        group.stalled = (
            0 if group.last is not None and (previous is None or group.last > previous) else group.stalled + 1
        )
        self._judge(group, batch, metric, end)

    def _choose(self, group: _Group, responses: list[ParsedResponse]) -> tuple[int, float, str | None]:
        """Which sample continues the group, its invalid fraction (the stop rules' metric), and
        whether it ends the group (``stop``; flexible mode: ``terminal`` or ``cap``)."""
        if self.spec.flexible is not None:
            return self._choose_flexible(group, responses, self.spec.flexible)
        for response in responses:
            self._check_group_and_first_step(group, response)
        kept = max(range(len(responses)), key=lambda i: (len(responses[i].valid_records), -i)) if responses else 0
        best = responses[kept] if responses else ParsedResponse()
        # judged as written: records past the stop are good records, only not wanted
        metric = 1.0 - valid_fraction(len(best.valid_records), len(best.invalid_records))
        return kept, metric, "stop" if self._keep_until_stop(best) else None

    def _choose_flexible(
        self, group: _Group, responses: list[ParsedResponse], rules: FlexibleRules
    ) -> tuple[int, float, str | None]:
        """NSS 0.1.16's flexible rules: each sample's valid prefix, then the first that ends the group."""
        for response in responses:
            self._check_first_step(group, response)
        next_index = 0 if group.last is None else int(group.last) + 1
        samples = [rules.keep(r.valid_records, next_index, group.last_source, lambda row: self._in_flexible_group(row, group))
                   for r in responses]  # fmt: skip
        for response, sample in zip(responses, samples, strict=True):
            _keep_only(response, sample)
        chosen = select(samples)
        if chosen is None:
            return 0, 1.0 - valid_fraction(0, len(responses[0].invalid_records)) if responses else 1.0, None
        group.last_source = samples[chosen].last_source
        metric = 1.0 - valid_fraction(len(samples[chosen].rows), len(responses[chosen].invalid_records))
        return chosen, metric, samples[chosen].end

    def _in_flexible_group(self, row: dict[str, Any], group: _Group) -> bool:
        """NSS's pseudo group (no group column) holds every row; else the typed value must match."""
        column = self.spec.group_column
        return column is None or row.get(column) == group.group_id

    def _check_group_and_first_step(self, group: _Group, response: ParsedResponse) -> None:
        """NSS's chronological check of a completion's first record against the group's last one,
        and the group column (which NSS 48a8f5c did not check; 0.1.16 compares typed values):
        failing records move to invalid."""
        column = self.spec.group_column
        if column is not None:
            others = [r for r in response.valid_records if not self._in_group(r.get(column), group)]
            if others:
                _move(response, others, OTHER_GROUP)
        self._check_first_step(group, response)

    def _check_first_step(self, group: _Group, response: ParsedResponse) -> None:
        """NSS's ``_check_chronological_for_group``: a completion whose first record does not come
        one interval after the group's last has all its records moved to invalid."""
        records = response.valid_records
        if not records or self.spec.interval is None or group.last is None:
            return
        first = self.processor.seconds(records[0])
        rollover = self.processor.rollover
        if first is None or step_problem(group.last, first, self.spec.interval, rollover=rollover) is not None:
            _move(response, list(records), OUT_OF_ORDER)

    def _in_group(self, value: object, group: _Group) -> bool:
        if self.spec.rules == "0.1.16":
            return value == group.group_id
        return str(value) == group.key

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

    def _advance(self, group: _Group, records: list[dict[str, Any]], texts: list[str]) -> None:
        """The window moves on whatever the batch's fate (as NSS: even a bad batch's records)."""
        if not records:
            return
        group.recent = (group.recent + records)[-RECENT:]
        group.prefill = prefill(group.recent)
        group.texts = (group.texts + texts)[-RECENT:]
        group.prefix = None
        last = self.processor.seconds(records[-1])
        group.last = last if last is not None else group.last

    def _judge(self, group: _Group, batch: Batch, metric: float, end: str | None) -> None:
        """NSS's per-group rule on the kept completion's invalid fraction (``metric``), except that a
        group whose records reach the stop (``end``) is complete: nothing after it is wanted (NSS went
        on past it, into times the adapter never saw, until the group failed). A flexible group's
        end (its marker, the cap) completes it whatever the fraction, as in NSS 0.1.16."""
        batch.log_summary(detailed_errors=self.detailed_errors)
        if group.tally is not None:
            group.tally.rows += batch.num_valid_records
            group.tally.end = end
        at_stop = end is not None or (
            self._stop_usable and group.last is not None and group.last >= (self.spec.stop or 0)
        )
        group.batches.append(batch)
        if metric >= self.threshold and not at_stop:
            group.bad_batches += 1
            if group.bad_batches >= self.patience:
                self._finish(group, "failed", f"{self.patience} batches in a row above the invalid threshold")
                return
        else:
            group.bad_batches = 0
            group.valid += batch.num_valid_records
            if at_stop or (self._quota_ends_groups and group.valid >= self._quota):
                self._finish(group, "completed")
                return
        if self.spec.rules == "0.1.16" and group.stalled >= self.patience:
            self._finish(group, "failed", f"{self.patience} batches in a row that did not move its time on")
            return
        self._report()

    def _finish(self, group: _Group, state: Literal["completed", "failed"], why: str = "") -> None:
        group.state = state
        if state == "failed":
            if group.tally is not None:
                group.tally.end = "failure"
            kept = sum(b.num_valid_records for b in group.batches)
            if self.spec.rules == "0.1.16":  # counted as invalid, as NSS 0.1.16 counts them
                logger.warning("group %s failed after %s; its %d records are invalid", group.key, why, kept)
                group.batches = [_invalidated(b, GROUP_FAILED) for b in group.batches]
                self._add(group)
            else:
                logger.warning("group %s failed after %s; its %d records are dropped", group.key, why, kept)
                group.batches = []
            self._report()
            return
        self._add(group)
        self._report()

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
            if self.spec.rules == "0.1.16":  # every group done, or INCOMPLETE (which only warns)
                self.batches.status = GenerationStatus.INCOMPLETE if failed else GenerationStatus.COMPLETE
            elif self.batches.num_valid_records == 0:
                self.batches.status = GenerationStatus.STOP_NO_RECORDS
            elif not failed:
                self.batches.status = GenerationStatus.COMPLETE

    def artifacts(self) -> dict[str, str]:
        """Flexible mode: the audit files NSS 0.1.16 writes beside the output, by name (else none)."""
        return self.audit.files(self.batches.status) if self.audit is not None else {}

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


def _record_texts(response: ParsedResponse, text: str) -> dict[int, str]:
    """Each valid record's text as the model wrote it (the processor keeps a completion's leading
    run of good records, in order, so they are its first record lines)."""
    lines = extract_records(sanitize_text(text))
    return {id(r): line for r, line in zip(response.valid_records, lines, strict=False)}


def _keep_only(response: ParsedResponse, sample: Kept) -> None:
    """The response holds the sample's kept rows as valid; its failed rows join the invalid ones."""
    response.valid_records = list(sample.rows)
    for row, error in sample.invalid:
        response.invalid_records.append(json.dumps(row, ensure_ascii=False))
        response.errors.append(error)


def _invalidated(batch: Batch, error: tuple[str, str]) -> Batch:
    """The batch with every valid record moved to invalid with ``error`` (counts kept)."""
    out = Batch()
    out.finish_reasons, out.num_completion_tokens = batch.finish_reasons, batch.num_completion_tokens
    for response in batch.responses:
        _move(response, list(response.valid_records), error)
        out.add_response(response)
    return out


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
