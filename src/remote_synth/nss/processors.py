"""Processors: one completion's text → ``ParsedResponse`` (NSS ``generation/processors.py``).

Deviations from NSS for grouped records (docs/deviations.md): records of a
failed group are reported as JSON, not Python ``repr``; invalid records and
their errors stay aligned; a missing or unorderable ``order_by`` value fails
the group ("Group not ordered") instead of aborting generation.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from .params import ValidationParameters
from .records import ErrorTuple, ParsedResponse, RecordValidator, extract_records, sanitize_text
from .timeseries import allows_rollover, parse_timestamp, step_problem

__all__ = ["GroupedDataProcessor", "Processor", "TabularDataProcessor", "TimeSeriesDataProcessor", "create_processor"]

GROUPBY = "groupby"
NO_DELIMITERS = ("Group BOS and/or EOS tokens missing", GROUPBY)
OTHER_RECORDS_INVALID = ("Invalid JSON in other groupby records", GROUPBY)
NOT_UNIQUE = ("Groupby value is not unique", GROUPBY)
NOT_ORDERED = ("Group not ordered", GROUPBY)


class Processor(ABC):
    """Callable ``(prompt_number, text) -> ParsedResponse``."""

    #: True when the special-token text must reach the parser (grouped BOS/EOS).
    needs_special_tokens: bool = False

    def __init__(
        self,
        schema: dict[str, Any],
        validation: ValidationParameters | None = None,
        detailed_errors: bool = True,
    ) -> None:
        self.validator = RecordValidator(schema, detailed_errors)
        self.validation = validation or ValidationParameters()

    def __call__(self, prompt_number: int, text: str) -> ParsedResponse:
        response = self.process_text(sanitize_text(text))
        response.prompt_number = prompt_number
        return response

    @abstractmethod
    def process_text(self, text: str) -> ParsedResponse:
        """Parse sanitised text."""


class TabularDataProcessor(Processor):
    """Independent records, one per line."""

    def process_text(self, text: str) -> ParsedResponse:
        return self.validator.split(extract_records(text))


class GroupedDataProcessor(Processor):
    """Records come in BOS … EOS groups that share ``group_by`` values, ordered by ``order_by``."""

    needs_special_tokens = True

    def __init__(
        self,
        schema: dict[str, Any],
        group_by: str | Sequence[str],
        bos_token: str,
        eos_token: str,
        order_by: str | None = None,
        validation: ValidationParameters | None = None,
        detailed_errors: bool = True,
    ) -> None:
        super().__init__(schema, validation, detailed_errors)
        self.group_by = [group_by] if isinstance(group_by, str) else list(group_by)
        self.order_by = order_by
        bos, eos = re.escape(bos_token), re.escape(eos_token)
        self._groups = re.compile(bos + r"\s?(?:{.+?}(?:\n|$)\s?)+\s?" + eos)

    def process_text(self, text: str) -> ParsedResponse:
        groups = self._groups.findall(text)
        if not groups and self.validation.group_by_accept_no_delineator:
            groups = [text]
        if not groups:
            return ParsedResponse(invalid_records=[text], errors=[NO_DELIMITERS])
        out = ParsedResponse()
        for group in groups:
            self._add_group(out, extract_records(group))
        return out

    def _add_group(self, out: ParsedResponse, raws: list[str]) -> None:
        """NSS 0.1.16: a failed group's records stay in order with the text the model wrote, and each
        carries the group's error; a group with no valid record keeps each record's own error."""
        results = [self.validator.parse(raw) for raw in raws]
        records = [r for r in results if type(r) is dict]
        if not records:
            out.invalid_records.extend(raws)
            out.errors.extend(results)  # type: ignore[arg-type]
            return
        if len(records) < len(raws):
            if not self.validation.group_by_ignore_invalid_records:
                _reject(out, raws, OTHER_RECORDS_INVALID)
                return
            raws = [raw for raw, r in zip(raws, results, strict=True) if type(r) is dict]
        problem = self._group_problem(records)
        if problem is not None:
            _reject(out, raws, problem)
            return
        out.valid_records.extend(records)

    def _group_problem(self, records: list[dict[str, Any]]) -> tuple[str, str] | None:
        """Check the group's key values and order; apply the allowed fixes only to a group that passes.

        The fixes are worked on copies: a group rejected after a key fix (say, for its order)
        reports what the model wrote, as NSS does.
        """
        fixed = records
        keys = [tuple(r.get(g) for g in self.group_by) for r in records]
        if any(k != keys[0] for k in keys):
            if not self.validation.group_by_fix_non_unique_value:
                return NOT_UNIQUE
            fixed = [records[0]] + [{**r, **dict(zip(self.group_by, keys[0], strict=True))} for r in records[1:]]
        problem = self._order_problem(fixed)
        if problem is None:
            records[:] = fixed
        return problem

    def _order_problem(self, records: list[dict[str, Any]]) -> tuple[str, str] | None:
        """None when ordered (or sorted, where that fix is allowed); sorts ``records`` in place."""
        order_by = self.order_by
        if order_by is None:
            return None
        values: list[Any] = [r.get(order_by) for r in records]
        try:
            if all(a <= b for a, b in zip(values, values[1:], strict=False)):
                return None
            if self.validation.group_by_fix_unordered_records:
                records.sort(key=lambda r: r.get(order_by))  # type: ignore[arg-type,return-value]
                return None
        except TypeError:
            pass
        return NOT_ORDERED


TIMESERIES = "TimeSeries"
AFTER_BAD_STEP = ("Invalid due to previous record error", TIMESERIES)


class TimeSeriesDataProcessor(Processor):
    """Records in time order: each must parse, carry a readable timestamp, and (with an interval)
    come exactly one interval after the record before it in the same completion.

    As NSS (reference §2.6): the first unreadable record ends the completion (later ones are not
    counted); a bad step makes that record and every later one invalid. The first record is checked
    against the group's last timestamp by the job source, which knows the group.
    """

    def __init__(
        self,
        schema: dict[str, Any],
        timestamp_column: str,
        timestamp_format: str,
        interval: float | None,
        validation: ValidationParameters | None = None,
        detailed_errors: bool = True,
    ) -> None:
        super().__init__(schema, validation, detailed_errors)
        self.column = timestamp_column
        self.format = timestamp_format
        self.interval = interval
        self.rollover = allows_rollover(timestamp_format)

    def process_text(self, text: str) -> ParsedResponse:
        out = ParsedResponse()
        previous: float | None = None
        raws = extract_records(text)
        for i, raw in enumerate(raws):
            record = self.validator.parse(raw)
            if type(record) is not dict:
                _invalid(out, raw, record)  # type: ignore[arg-type]
                return out
            stamp = self.timestamp(record)
            if isinstance(stamp, tuple):
                _invalid(out, raw, stamp)
                return out
            step = self._step_problem(previous, stamp)
            if step is not None:
                _invalid(out, raw, step)
                for later in raws[i + 1 :]:
                    _invalid(out, later, AFTER_BAD_STEP)
                return out
            out.valid_records.append(record)
            previous = stamp
        return out

    def timestamp(self, record: dict[str, Any]) -> float | ErrorTuple:
        """The record's time in seconds, or NSS's error for a missing or unreadable one."""
        value = record.get(self.column)
        if value is None:
            return (f"Missing '{self.column}' required for interval validation", TIMESERIES)
        try:
            return parse_timestamp(value, self.format)
        except (TypeError, ValueError) as exc:
            shown = f" '{value}': {exc}" if self.validator.detailed_errors else ""
            return (f"Invalid '{self.column}' value{shown}", TIMESERIES)

    def seconds(self, record: dict[str, Any]) -> float | None:
        """The record's time in seconds, or None when it has no readable one."""
        stamp = self.timestamp(record)
        return None if isinstance(stamp, tuple) else stamp

    def _step_problem(self, previous: float | None, current: float) -> ErrorTuple | None:
        if self.interval is None:
            return None
        problem = step_problem(previous, current, self.interval, rollover=self.rollover)
        if problem == "backwards":
            return (f"'{self.column}' must be strictly increasing", TIMESERIES)
        if problem == "gap":
            return (f"'{self.column}' must advance in {self.interval:g} seconds increments with no gaps", TIMESERIES)
        return None


def _invalid(out: ParsedResponse, raw: str, error: ErrorTuple) -> None:
    out.invalid_records.append(raw)
    out.errors.append(error)


def _reject(out: ParsedResponse, raws: list[str], reason: tuple[str, str]) -> None:
    """Count a group's records as invalid, as written and in order, each with the group's error."""
    out.invalid_records.extend(raws)
    out.errors.extend([reason] * len(raws))


def create_processor(
    schema: dict[str, Any],
    *,
    group_by: str | Sequence[str] | None = None,
    order_by: str | None = None,
    bos_token: str = "",
    eos_token: str = "",
    validation: ValidationParameters | None = None,
    detailed_errors: bool = True,
) -> Processor:
    """Grouped when the run was trained with ``group_training_examples_by``, else tabular."""
    if group_by:
        return GroupedDataProcessor(schema, group_by, bos_token, eos_token, order_by, validation, detailed_errors)
    return TabularDataProcessor(schema, validation, detailed_errors)
