"""The time-series run kind: settings read once from the run directory (reference §5).

What ``RemoteBackend`` needs to drive ``TimeseriesJobs``: the processor, the time settings in
seconds, the prompt for a group's prefill, each group's first prefill, and the output's order.
Time series generate without structured outputs, as NSS's do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from .._exceptions import RunDirError
from ..nss.flexible import FlexibleRules
from ..nss.params import GenerateParameters
from ..nss.processors import TimeSeriesDataProcessor
from ..nss.prompt import build_prompt
from ..nss.results import GenerateJobResults, GenerationBatches
from ..nss.rundir import ModelMetadata, RunDirectory
from ..nss.schema import generation_schema
from ..nss.timeseries import ELAPSED_SECONDS, format_bound, parse_bound, partial_record_prefix
from .accounting import CompletionLog, Progress
from .flexible_audit import FlexibleAudit
from .kind import complete_when_done
from .series_jobs import GroupStart, SeriesPrompts, SeriesSpec, TextPrefills, TimeseriesJobs, TokenPrompts

__all__ = ["PSEUDO_GROUP", "SeriesKind"]

logger = logging.getLogger("remote_synth.remote")

PSEUDO_GROUP = "__nss_sequence_id"
"""The group NSS's training adds to a table without one; it is in no prompt and no output."""


@dataclass(frozen=True)
class SeriesKind:
    processor: TimeSeriesDataProcessor
    spec: SeriesSpec
    columns: list[str]
    """The prompt's column order: group, time, then the rest, as training wrote the records (bug 5)."""
    template: str
    instruction: str
    starts: tuple[GroupStart, ...]
    """Every group, in order, with where it starts."""
    table_columns: list[str]
    """The run's columns, as the results carry them before sorting."""
    config: GenerateParameters
    detailed_errors: bool
    token_prompts: tuple[tuple[list[int], list[int]], int, int] | None = None
    """NSS 0.1.16: the prompt's own (BOS, EOS) ids, the sequence BOS id, the model's context."""
    output_columns: tuple[str, ...] = ()
    """NSS 0.1.16: the source table's column order (``timeseries_metadata.source_columns``)."""
    structured_outputs: dict[str, Any] | None = None
    structured_choices: tuple[dict[str, Any], ...] = ()
    """NSS sends none for time series."""
    journal_keys: int = 1
    """A journal entry names its group first."""
    accepts_structured_generation: bool = False

    @classmethod
    def open(
        cls,
        run: RunDirectory,
        metadata: ModelMetadata,
        config: GenerateParameters | None = None,
        detailed_errors: bool = False,
    ) -> SeriesKind:
        config = config if config is not None else GenerateParameters.resolve(run.config.generation, use_env=False)
        if config.structured_generation.enabled:
            logger.warning("time-series runs generate without structured outputs, as NSS's do: "
                           "structured_generation.enabled is ignored")  # fmt: skip
        series = run.config.time_series
        column, fmt = str(series.timestamp_column), str(series.timestamp_format)
        group = run.config.data.group_training_examples_by
        group_column = group if isinstance(group, str) and group != PSEUDO_GROUP else None
        processor = TimeSeriesDataProcessor(generation_schema(run.schema, config.validation), column, fmt, series.timestamp_interval_seconds,
                                            config.validation, detailed_errors)  # fmt: skip
        spec = SeriesSpec(
            interval=series.timestamp_interval_seconds,
            start=parse_bound(series.start_timestamp, fmt),
            stop=parse_bound(series.stop_timestamp, fmt),
            group_column=group_column,
            rules="0.1.16" if run.speaks_series_016 else "48a8f5c",
        )
        if run.speaks_series_016:
            return cls._open_016(run, metadata, config, detailed_errors, processor, spec)
        first = [c for c in (group_column, column) if c is not None]
        columns = first + [c for c in run.columns if c not in first and c != PSEUDO_GROUP]
        prefills = {str(k): str(v) for k, v in (metadata.initial_prefill or {}).items()}
        starts = tuple(GroupStart(key, key, prefill=text) for key, text in prefills.items())
        return cls(processor, spec, columns, metadata.prompt_config.template, metadata.instruction, starts,
                   run.columns, config, detailed_errors)  # fmt: skip

    @classmethod
    def _open_016(
        cls,
        run: RunDirectory,
        metadata: ModelMetadata,
        config: GenerateParameters,
        detailed_errors: bool,
        processor: TimeSeriesDataProcessor,
        spec: SeriesSpec,
    ) -> SeriesKind:
        """NSS 0.1.16: the schema's order, one partial first record per registered group."""
        series = run.config.time_series
        assert series.start_timestamp is not None and metadata.timeseries_group_values  # RunDirectory.check
        start = format_bound(series.start_timestamp, processor.format)  # NSS 0.1.16 wrote str(Timestamp): T11
        starts = tuple(_group_starts(run, metadata.timeseries_group_values, spec.group_column, processor.column, start))
        prompt = metadata.prompt_config
        assert prompt.bos_token_id is not None
        special = ([prompt.bos_token_id] if prompt.add_bos_token_to_prompt else [],
                   [prompt.eos_token_id] if prompt.add_eos_token_to_prompt and prompt.eos_token_id is not None else [])  # fmt: skip
        source = metadata.timeseries_metadata.source_columns if metadata.timeseries_metadata else []
        flexible = run.flexible
        if flexible is not None:
            spec = replace(spec, flexible=FlexibleRules(
                flexible.index_column, flexible.marker_column, flexible.max_records, flexible.source_timestamp_column,
                flexible.source_timestamp_format, flexible.source_interval_seconds))  # fmt: skip
        return cls(processor, spec, run.columns, prompt.template, metadata.instruction, starts, run.columns, config,
                   detailed_errors, token_prompts=(special, prompt.bos_token_id, metadata.max_seq_length),
                   output_columns=tuple(source))  # fmt: skip

    @property
    def prompt(self) -> str:
        """The preflight's prompt: each job's ends in its group's prefill (``prompt_for``)."""
        return self.prompt_for("")

    def prompt_for(self, prefill: str) -> str:
        return build_prompt(self.columns, self.template, self.instruction, prefill=prefill)

    def jobs(
        self,
        batches: GenerationBatches,
        body: Mapping[str, object],
        *,
        on_batch: Callable[[Progress], None] | None,
        log: CompletionLog | None,
        tokenize: Callable[[str], Awaitable[list[int]]] | None = None,
    ) -> TimeseriesJobs:
        c, rules = self.config, self.spec.flexible
        audit = (
            FlexibleAudit(lambda: self.sort(batches.to_dataframe(self.table_columns)), rules.max_records)
            if rules is not None
            else None
        )
        return TimeseriesJobs(batches, self.processor, self.spec, self._prompts(body, tokenize), body, self.starts,
                              target=c.num_records, threshold=c.invalid_fraction_threshold, patience=c.patience,
                              detailed_errors=self.detailed_errors, on_batch=on_batch, log=log, audit=audit)  # fmt: skip

    def _prompts(
        self, body: Mapping[str, object], tokenize: Callable[[str], Awaitable[list[int]]] | None
    ) -> SeriesPrompts:
        if self.token_prompts is None:
            room = body.get("max_tokens")
            return TextPrefills(self.prompt_for, room if isinstance(room, int) else 0)
        if tokenize is None:
            raise ValueError("an NSS 0.1.16 time series needs the server's tokenizer")
        special, bos, context = self.token_prompts
        return TokenPrompts(self.prompt, special, bos, tokenize, context)

    def finish(self, batches: GenerationBatches, *, done: bool, elapsed: float) -> GenerateJobResults:
        """No truncation (num_records is only a progress target here); sorted by group and time."""
        complete_when_done(batches, done=done)
        results = GenerateJobResults.from_batches(batches, None, self.table_columns, elapsed)
        results.df = self.sort(results.df)
        if self.spec.flexible is not None:  # the index and marker were the model's, not the table's
            results.df = results.df.drop(columns=list(self.spec.flexible.internal_columns), errors="ignore")
        if self.output_columns:  # NSS 0.1.16 gives the source table's order back
            first = [c for c in self.output_columns if c in results.df.columns]
            results.df = results.df[first + [c for c in results.df.columns if c not in first]]
        return results

    def sort(self, df: pd.DataFrame) -> pd.DataFrame:
        """By group, then by time as time (NSS sorted formatted timestamps as text: bug 9).

        Times of day pass midnight: within a group they keep the order they were generated in.
        """
        if df.empty:
            return df.drop(columns=[PSEUDO_GROUP], errors="ignore")
        by_clock = self.processor.rollover and self.processor.format != ELAPSED_SECONDS
        column = self.processor.column
        times = (
            pd.Series(range(len(df)), index=df.index)
            if by_clock
            else df[column].map(lambda v: _or_last(self.processor.seconds({column: v})))
        )
        keys = pd.DataFrame({"time": times}, index=df.index)
        if self.spec.group_column is not None and self.spec.group_column in df:
            keys.insert(0, "group", df[self.spec.group_column].astype(str))
        order = keys.sort_values(list(keys.columns), kind="stable").index
        return df.loc[order].reset_index(drop=True).drop(columns=[PSEUDO_GROUP], errors="ignore")


def _or_last(seconds: float | None) -> float:
    """An unreadable time sorts last (it cannot be in the output: such records are invalid)."""
    return float("inf") if seconds is None else seconds


def _group_starts(
    run: RunDirectory, groups: Sequence[object], group_column: str | None, time_column: str, start: object
) -> list[GroupStart]:
    """A partial first record per registered group (each once, in the registry's order)."""
    starts: dict[str, GroupStart] = {}
    for ordinal, group_id in enumerate(groups, start=1):
        seed = {group_column: group_id, time_column: start} if group_column is not None else {time_column: start}
        try:
            prefix = partial_record_prefix(run.columns, run.schema, seed)
        except (TypeError, ValueError) as exc:
            raise RunDirError(run.adapter_dir / "metadata_v2.json",
                              f"group {ordinal} of timeseries_group_values cannot start a record: {exc}") from None  # fmt: skip
        key = json.dumps(group_id, ensure_ascii=False)
        starts.setdefault(key, GroupStart(key, group_id, prefix=prefix))
    return list(starts.values())
