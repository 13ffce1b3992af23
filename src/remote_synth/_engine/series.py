"""The time-series run kind: settings read once from the run directory (reference §5).

What ``RemoteBackend`` needs to drive ``TimeseriesJobs``: the processor, the time settings in
seconds, the prompt for a group's prefill, each group's first prefill, and the output's order.
Time series generate without structured outputs, as NSS's do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..nss.params import GenerateParameters
from ..nss.processors import TimeSeriesDataProcessor
from ..nss.prompt import build_prompt
from ..nss.results import GenerateJobResults, GenerationBatches
from ..nss.rundir import ModelMetadata, RunDirectory
from ..nss.schema import generation_schema
from ..nss.timeseries import ELAPSED_SECONDS, parse_bound
from .accounting import CompletionLog, Progress
from .kind import complete_when_done
from .series_jobs import SeriesSpec, TimeseriesJobs

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
    initial_prefill: dict[str, str]
    table_columns: list[str]
    """The run's columns, as the results carry them before sorting."""
    config: GenerateParameters
    detailed_errors: bool
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
        )
        first = [c for c in (group_column, column) if c is not None]
        columns = first + [c for c in run.columns if c not in first and c != PSEUDO_GROUP]
        prefills = {str(k): str(v) for k, v in (metadata.initial_prefill or {}).items()}
        return cls(processor, spec, columns, metadata.prompt_config.template, metadata.instruction, prefills,
                   run.columns, config, detailed_errors)  # fmt: skip

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
    ) -> TimeseriesJobs:
        c = self.config
        return TimeseriesJobs(batches, self.processor, self.spec, self.prompt_for, body, self.initial_prefill,
                              target=c.num_records, threshold=c.invalid_fraction_threshold, patience=c.patience,
                              detailed_errors=self.detailed_errors, on_batch=on_batch, log=log)  # fmt: skip

    def finish(self, batches: GenerationBatches, *, done: bool, elapsed: float) -> GenerateJobResults:
        """No truncation (num_records is only a progress target here); sorted by group and time."""
        complete_when_done(batches, done=done)
        results = GenerateJobResults.from_batches(batches, None, self.table_columns, elapsed)
        results.df = self.sort(results.df)
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
