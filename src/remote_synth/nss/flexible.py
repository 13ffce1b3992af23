"""NSS 0.1.16's flexible time-series mode: groups of differing lengths, each ended by a marker.

When a table's groups differ in shape, NSS 0.1.16's training numbers each group's rows from 0 in
an index column (``_time_idx``), marks each group's last row (``_is_last_row``), and trains on
those; the index becomes the run's time column (elapsed "seconds", one apart, 0 to
``max_records - 1``). Generation (``TimeseriesBackend``, nss-0.1.16 §3.9) keeps a completion's
structurally valid prefix: rows of the active group whose index goes on from the group's last one
by one each, up to the first marked row (the group is done: ``terminal``) or the largest source
group's last index (``cap``). A source timestamp column, if the table had one, must parse in its
format, never go back, and keep the asserted interval. The sample that continues the group is the
first that ends it, else the first with any row kept.

Where this differs from NSS 0.1.16 (``docs/deviations.md``): rows after the end (marker or cap)
are dropped, not counted invalid (as rows past a deterministic group's stop are); rows after a
failed row are invalid with "Generated row follows an invalid sequence row" (NSS wrote "appears
after the sequence end marker" for those too, with no marker anywhere).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .timeseries import parse_timestamp

__all__ = ["End", "FlexibleRules", "Kept", "select"]

End = Literal["terminal", "cap"]
ErrorTuple = tuple[str, str]
TIMESERIES = "TimeSeries"
OTHER_GROUP = ("Generated record group does not match the active time-series group", TIMESERIES)
NOT_AN_INDEX = ("Generated sequence index is not a valid integer", TIMESERIES)
AFTER_INVALID = ("Generated row follows an invalid sequence row", TIMESERIES)
BAD_SOURCE_FORMAT = ("Generated source timestamp does not match the source timestamp format", TIMESERIES)
SOURCE_BACKWARDS = ("Generated source timestamp decreases within the group", TIMESERIES)
SOURCE_INTERVAL = ("Generated source timestamp does not follow timestamp_interval_seconds", TIMESERIES)


@dataclass(frozen=True)
class Kept:
    """What one sample gives its group: the rows kept, how it ends the group, and the rest."""

    rows: list[dict[str, Any]]
    end: End | None
    invalid: list[tuple[dict[str, Any], ErrorTuple]]
    """Rows that failed a check (the first failure) or follow one, with their errors, in order."""
    dropped: int
    """Good rows after the group's end: not wanted, not invalid."""
    last_source: float | None
    """The source timestamp of the last row kept (the previous one's when none is readable)."""


@dataclass(frozen=True)
class FlexibleRules:
    """The run's flexible controls (``timeseries_metadata.flexible`` of ``metadata_v2.json``)."""

    index_column: str
    marker_column: str
    max_records: int
    source_column: str | None = None
    source_format: str | None = None
    source_interval: float | None = None

    @property
    def internal_columns(self) -> tuple[str, str]:
        """Columns generation needs and the output does not have."""
        return self.index_column, self.marker_column

    def keep(
        self,
        rows: Sequence[dict[str, Any]],
        next_index: int,
        last_source: float | None,
        in_group: Callable[[dict[str, Any]], bool],
    ) -> Kept:
        """The prefix of ``rows`` (a sample's valid records, in order) that continues the group
        whose next index is ``next_index``, and what ends or breaks it."""
        kept: list[dict[str, Any]] = []
        invalid: list[tuple[dict[str, Any], ErrorTuple]] = []
        end: End | None = None
        for i, row in enumerate(rows):
            problem, source = self._problem(row, next_index + len(kept), last_source, in_group)
            if problem is not None:
                invalid.append((row, problem))
                invalid.extend((later, AFTER_INVALID) for later in rows[i + 1 :])
                break
            kept.append(row)
            last_source = source if source is not None else last_source
            end = self._end(row)
            if end is not None:
                return Kept(kept, end, invalid, len(rows) - i - 1, last_source)
        return Kept(kept, end, invalid, 0, last_source)

    def _problem(
        self,
        row: dict[str, Any],
        expected: int,
        last_source: float | None,
        in_group: Callable[[dict[str, Any]], bool],
    ) -> tuple[ErrorTuple | None, float | None]:
        if not in_group(row):
            return OTHER_GROUP, None
        index = row.get(self.index_column)
        if not isinstance(index, int) or isinstance(index, bool):
            return NOT_AN_INDEX, None
        if index != expected:
            return (f"Generated sequence index {index!r} does not match expected index {expected}", TIMESERIES), None
        return self._source_problem(row, last_source)

    def _source_problem(self, row: dict[str, Any], last: float | None) -> tuple[ErrorTuple | None, float | None]:
        """NSS's ``_check_source_timestamp``: readable in the source's format, never earlier than
        the row before, and exactly the asserted interval on from it."""
        if self.source_column is None:
            return None, None
        seconds = self.source_seconds(row)
        if seconds is None:
            return BAD_SOURCE_FORMAT, None
        if last is None:
            return None, seconds
        if seconds < last:
            return SOURCE_BACKWARDS, None
        if self.source_interval is not None and seconds - last != self.source_interval:
            return SOURCE_INTERVAL, None
        return None, seconds

    def source_seconds(self, row: dict[str, Any]) -> int | None:
        """The row's source timestamp in seconds, or None when absent or unreadable."""
        if self.source_column is None or self.source_format is None:
            return None
        value = row.get(self.source_column)
        if value is None:
            return None
        try:
            return int(parse_timestamp(str(value), self.source_format))  # NSS: whole seconds, read as text
        except (TypeError, ValueError, OverflowError):
            return None

    def _end(self, row: dict[str, Any]) -> End | None:
        if row.get(self.marker_column) is True:
            return "terminal"
        if row[self.index_column] >= self.max_records - 1:
            return "cap"
        return None


def select(samples: Sequence[Kept]) -> int | None:
    """NSS 0.1.16's choice: the first sample that ends its group with the marker, else the first
    that keeps any row (the most rows would favour samples that run past the group's end)."""
    first: int | None = None
    for i, sample in enumerate(samples):
        if not sample.rows:
            continue
        if sample.end == "terminal":
            return i
        if first is None:
            first = i
    return first
