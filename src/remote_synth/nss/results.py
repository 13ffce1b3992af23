"""The batch loop's state: status, stopping, prompt counts, results (NSS ``results.py``).

``GenerationBatches`` keeps running totals and one normalised frame per batch,
so adding a batch costs the same whether it is the 2nd or the 2,000th; the
final frame is concatenated once. The one exception is the contract of
``data_actions_fn``, whose second argument is every record accepted so far.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import pandas as pd

from .._exceptions import ConfigError, GenerationError
from .batch import Batch, normalize_dataframe, valid_fraction

__all__ = [
    "ADAPTIVE_MAX_PROMPTS_CEILING",
    "INITIAL_PROBE_PROMPTS",
    "MAX_NUM_PROMPTS_PER_BATCH",
    "NUM_PROMPT_BUFFER",
    "DataActionsFn",
    "GenerateJobResults",
    "GenerationBatches",
    "GenerationStatus",
    "GenerationStopCondition",
    "RunningStatistics",
]

logger = logging.getLogger("remote_synth.results")

TOO_MANY_INVALID = (
    "Lower the temperature or turn on structured generation (structured_generation.enabled); if neither "
    "helps, the adapter may need more training ('num_input_records_to_sample')."
)
"""What to do about a stop for invalid records: generation-side remedies first (NSS puts training first)."""

MAX_NUM_PROMPTS_PER_BATCH = 100
ADAPTIVE_MAX_PROMPTS_CEILING = 2000
INITIAL_PROBE_PROMPTS = 10
NUM_PROMPT_BUFFER = 10
_EPS = 1e-15
IDX = "__nss__idx"
REJECT_REASON = "__nss_reject_reason"

DataActionsFn = Callable[[pd.DataFrame, pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]
"""``fn(batch_df, accumulated_df) -> (valid_df, rejected_df)``, keyed by ``__nss__idx``."""


class GenerationStatus(StrEnum):
    """Where a generation job stands."""

    COMPLETE = "complete"
    """The target was reached (or there was none)."""
    INCOMPLETE = "incomplete"
    """The loop ended below the target without a stop condition."""
    IN_PROGRESS = "in_progress"
    """Still generating."""
    STOP_NO_RECORDS = "stop_no_records"
    """The first batch had no valid record (or, without a stop condition, any batch)."""
    STOP_METRIC_REACHED = "stop_metric_reached"
    """The running invalid fraction stayed at or above the threshold for ``patience`` batches."""


class RunningStatistics:
    """Welford's running count, mean, sample deviation, min and max (cumulative, equal weights)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.sum_sq_diffs = 0.0
        self.min = math.inf
        self.max = -math.inf

    def update(self, value: float) -> None:
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.sum_sq_diffs += delta * (value - self.mean)
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    @property
    def stddev(self) -> float:
        return math.sqrt(self.sum_sq_diffs / (self.count - 1)) if self.count > 1 else 0.0


class GenerationStopCondition:
    """Reached after ``patience`` consecutive values at or above ``threshold``.

    ``update`` records a value; ``reached`` only answers (NSS's
    ``has_been_reached`` did both).
    """

    def __init__(self, threshold: float, patience: int) -> None:
        self.threshold = threshold
        self.patience = patience
        self.counter = 0
        self.last_value: float | None = None

    def update(self, value: float) -> None:
        self.last_value = value
        self.counter = self.counter + 1 if value >= self.threshold else 0

    @property
    def reached(self) -> bool:
        """Only on a value at or above the threshold: with patience ≤ 0 NSS still waits for one."""
        return self.counter > 0 and self.counter >= self.patience


@dataclass
class GenerateJobResults:
    """What ``generate()`` returns: NSS 0.1.16's sixteen fields, same meanings.

    The token fields are None when no token data was seen (as in NSS). The completion tokens come
    from the server's ``usage``; the per-record token counts need each record tokenized (NSS runs
    its tokenizer in-process), which a remote client would pay for with a request per record: they
    stay None, and so do the figures derived from them.
    """

    df: pd.DataFrame
    """Valid records, schema columns in order; truncated to the target for tabular runs."""
    status: GenerationStatus
    num_valid_records: int
    """After data actions, before truncation (so it can exceed ``len(df)``)."""
    num_invalid_records: int
    num_prompts: int
    """Completions requested and parsed."""
    valid_record_fraction: float
    batch_valid_record_fractions: list[float] = field(default_factory=list)
    elapsed_time: float = 0.0
    num_completion_tokens: int | None = None
    """Tokens the server generated for every completion used (its ``usage.completion_tokens``)."""
    num_valid_record_tokens: int | None = None
    num_invalid_record_tokens: int | None = None
    num_non_record_tokens: int | None = None
    tokens_per_prompt: float | None = None
    """``num_completion_tokens / num_prompts``."""
    tokens_per_second: float | None = None
    """``num_completion_tokens / elapsed_time``."""
    valid_tokens_per_second: float | None = None
    tokenization_overhead_sec: float | None = None

    @classmethod
    def from_batches(
        cls,
        batches: GenerationBatches,
        max_num_records: int | None,
        columns: list[str],
        elapsed_time: float = 0.0,
    ) -> GenerateJobResults:
        """NSS's argument order: ``(batches, max_num_records, columns, elapsed_time)``."""
        tokens = batches.num_completion_tokens or None
        return cls(
            df=batches.to_dataframe(columns, max_num_records),
            status=batches.status,
            num_valid_records=batches.num_valid_records,
            num_invalid_records=batches.num_invalid_records,
            num_prompts=batches.num_prompts,
            valid_record_fraction=batches.valid_record_fraction,
            batch_valid_record_fractions=list(batches.batch_valid_record_fractions),
            elapsed_time=elapsed_time,
            num_completion_tokens=tokens,
            tokens_per_prompt=tokens / batches.num_prompts if tokens and batches.num_prompts else None,
            tokens_per_second=tokens / elapsed_time if tokens and elapsed_time > 0 else None,
        )


def adaptive_cap(explicit: int | None, target: int | None) -> int:
    """NSS 0.1.16's prompts per batch: as given, else one per 20 records wanted, within 100…2000."""
    if explicit is not None:
        return explicit
    if target is None:
        return MAX_NUM_PROMPTS_PER_BATCH
    return min(ADAPTIVE_MAX_PROMPTS_CEILING, max(MAX_NUM_PROMPTS_PER_BATCH, target // 20))


class GenerationBatches:
    """Accumulates batches and decides how many prompts come next and when to stop.

    ```python
    batches = GenerationBatches(target_num_records=1000, invalid_fraction_threshold=0.8, patience=3)
    while batches.num_valid_records < 1000 and batches.status is GenerationStatus.IN_PROGRESS:
        batches.add_batch(run_one_batch(batches.get_next_num_prompts()))
    batches.job_complete()
    batches.raise_for_status()
    ```
    """

    def __init__(
        self,
        target_num_records: int | None = None,
        batches: list[Batch] | None = None,
        max_num_prompts_per_batch: int | None = None,
        invalid_fraction_threshold: float | None = None,
        patience: int | None = None,
        data_actions_fn: DataActionsFn | None = None,
    ) -> None:
        if (invalid_fraction_threshold is None) != (patience is None):
            raise ConfigError("invalid_fraction_threshold and patience must be given together")
        self.target_num_records = target_num_records
        self.max_num_prompts_per_batch = adaptive_cap(max_num_prompts_per_batch, target_num_records)
        self.stop_condition = (
            GenerationStopCondition(invalid_fraction_threshold, patience)
            if invalid_fraction_threshold is not None and patience is not None
            else None
        )
        self.data_actions_fn = data_actions_fn
        self.status = GenerationStatus.IN_PROGRESS
        self.running = RunningStatistics()
        self.num_batches = 0
        self.num_valid_records = 0
        self.num_invalid_records = 0
        self.num_prompts = 0
        self.num_completion_tokens = 0
        self.last_batch_inconclusive = False
        self.batch_valid_record_fractions: list[float] = []
        self._frames: list[pd.DataFrame] = []
        self._accepted: pd.DataFrame | None = None
        for batch in batches or ():
            self._count(batch, batch.to_dataframe())

    def _count(self, batch: Batch, frame: pd.DataFrame | None) -> None:
        """Add a batch's totals and frame (seeded batches skip the stop rules, as in NSS)."""
        self.num_batches += 1
        self.num_valid_records += batch.num_valid_records
        self.num_invalid_records += batch.num_invalid_records
        self.num_prompts += batch.num_prompts
        self.num_completion_tokens += batch.num_completion_tokens
        self.last_batch_inconclusive = batch.is_inconclusive
        self.batch_valid_record_fractions.append(batch.valid_record_fraction)
        if frame is not None:
            self._frames.append(frame)

    @property
    def valid_record_fraction(self) -> float:
        return valid_fraction(self.num_valid_records, self.num_invalid_records)

    def add_batch(self, batch: Batch, *, judge: bool = True) -> None:
        """Apply data actions, update totals and the stop status (NSS ``add_batch``).

        ``judge=False`` counts a batch cut short (a failure, an interrupt) without
        applying the stop rules to it: its records are kept, its status says nothing.
        """
        frame = self._apply_data_actions(batch) if self.data_actions_fn else batch.to_dataframe()
        if not judge:
            self._count(batch, frame)
            return
        self.running.update(batch.stopping_metric)
        first = self.num_batches == 0
        if batch.num_valid_records == 0 and self.stop_condition is None:
            self.status = GenerationStatus.STOP_NO_RECORDS
        elif batch.num_valid_records == 0 and first and not batch.is_inconclusive:  # NSS 0.1.16
            self.status = GenerationStatus.STOP_NO_RECORDS
        elif self.stop_condition is not None:
            self.stop_condition.update(self.running.mean)
            if self.stop_condition.reached:
                self.status = GenerationStatus.STOP_METRIC_REACHED
        self._count(batch, frame)

    def get_next_num_prompts(self) -> int:
        """NSS 0.1.16: a 10-prompt probe first (again after an inconclusive batch); with no valid
        record yet, the rest plus 10; then enough for the rest at the observed yield, plus 10.
        Never more than the cap."""
        cap = self.max_num_prompts_per_batch
        if self.target_num_records is None:
            return cap
        remaining = self.target_num_records - self.num_valid_records
        if self.num_valid_records > 0 and self.num_prompts > 0:
            per_prompt = self.num_valid_records / self.num_prompts
            return min(cap, round(remaining / (per_prompt + _EPS)) + NUM_PROMPT_BUFFER)
        if self.num_prompts == 0 or self.last_batch_inconclusive:
            return min(cap, INITIAL_PROBE_PROMPTS, remaining + NUM_PROMPT_BUFFER)
        return min(cap, remaining + NUM_PROMPT_BUFFER)

    @property
    def is_stopped(self) -> bool:
        return self.status in (GenerationStatus.STOP_NO_RECORDS, GenerationStatus.STOP_METRIC_REACHED)

    def job_complete(self) -> GenerationStatus:
        """Turn IN_PROGRESS into COMPLETE or INCOMPLETE; STOP_* statuses stay."""
        if self.status is GenerationStatus.IN_PROGRESS:
            done = self.target_num_records is None or self.num_valid_records >= self.target_num_records
            self.status = GenerationStatus.COMPLETE if done else GenerationStatus.INCOMPLETE
        return self.status

    def raise_for_status(self) -> None:
        """Raise ``GenerationError`` for the STOP_* statuses; log the others."""
        if self.status is GenerationStatus.STOP_NO_RECORDS:
            raise GenerationError("Generation stopped prematurely due to no valid records. " + TOO_MANY_INVALID)
        if self.status is GenerationStatus.STOP_METRIC_REACHED and self.stop_condition is not None:
            raise GenerationError(
                "Generation stopped prematurely because the average fraction of invalid records was at or above "
                f"{self.stop_condition.threshold:.2%} for {self.stop_condition.patience} batches in a row "
                f"(last {self.stop_condition.last_value or 0:.2%}). " + TOO_MANY_INVALID
            )
        if self.status is GenerationStatus.INCOMPLETE:
            logger.warning("generation ended with %d of %s records", self.num_valid_records, self.target_num_records)
        else:
            logger.info("generation %s: %d valid records", self.status.value, self.num_valid_records)

    def to_dataframe(self, columns: list[str], max_num_records: int | None = None) -> pd.DataFrame:
        """Every batch's valid records in schema column order; ``max_num_records`` 0/None = all.

        A nullable column that never appeared is all-NaN instead of NSS's KeyError.
        """
        if self.num_valid_records == 0 or not self._frames:
            return pd.DataFrame(columns=columns)
        df = pd.concat(self._frames, ignore_index=True).reindex(columns=columns)
        return df.head(max_num_records or len(df))

    def _apply_data_actions(self, batch: Batch) -> pd.DataFrame | None:
        """Run ``data_actions_fn`` and move its rejections to the batch's invalid records."""
        records = batch.valid_records()
        if not records:
            return None
        batch_df = normalize_dataframe(pd.DataFrame.from_records([{**r, IDX: i} for i, r in enumerate(records)]))
        accumulated = self._accepted if self._accepted is not None else batch_df.iloc[0:0]
        assert self.data_actions_fn is not None
        valid_df, rejected_df = self.data_actions_fn(batch_df, accumulated)
        ids = list(valid_df[IDX]) + list(rejected_df[IDX])
        if sorted(ids) != list(range(len(records))):
            raise ConfigError("data_actions_fn must map every record of the batch to exactly one valid or rejected row")
        self._accepted = (
            valid_df if self._accepted is None else pd.concat([self._accepted, valid_df], ignore_index=True)
        )
        _replace_records(batch, valid_df, rejected_df)
        return normalize_dataframe(valid_df.drop(columns=IDX)) if len(valid_df) else None


def _replace_records(batch: Batch, valid_df: pd.DataFrame, rejected_df: pd.DataFrame) -> None:
    """The batch now holds the transformed valid rows, and the rejected rows as invalid ones."""
    rejected = [{str(k): v for k, v in row.items()} for row in rejected_df.drop(columns=IDX).to_dict("records")]
    batch.replace_valid_records(
        [{str(k): v for k, v in row.items()} for row in valid_df.drop(columns=IDX).to_dict("records")],
        invalid=[str(r) for r in rejected],
        errors=[(f"Failed data_config validation due to [{r.get(REJECT_REASON)}]",) * 2 for r in rejected],
    )
