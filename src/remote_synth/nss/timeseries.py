"""Time in NSS's time-series runs: timestamps, their steps, and how many samples a group's prompt gets.

The pure rules of NSS's ``TimeseriesBackend`` and ``TimeSeriesDataProcessor`` (reference §2.6, §5),
kept apart from requests and records so that the job producer (issue 10) and its tests share them.
Where NSS is wrong, the fix is named (reference §8, bug 8) and listed in ``docs/deviations.md``.
"""

from __future__ import annotations

import calendar
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pandas as pd

__all__ = [
    "ELAPSED_SECONDS",
    "MAX_ACTIVE_GROUPS",
    "allows_rollover",
    "expected_records",
    "format_bound",
    "history",
    "partial_record_prefix",
    "prompt_token_ids",
    "step_problem",
    "parse_bound",
    "parse_timestamp",
    "prefill",
    "samples_per_prompt",
]

StepProblem = Literal["backwards", "gap"]
ELAPSED_SECONDS = "elapsed_seconds"
"""The format NSS gives the column it makes when a table has no timestamp (integer seconds)."""
SAMPLES_PER_PROMPT = 5
MAX_PROMPTS_PER_BATCH = 100
MAX_ACTIVE_GROUPS = max(1, MAX_PROMPTS_PER_BATCH // SAMPLES_PER_PROMPT)  # 20
DAY = 86400
_DATE_DIRECTIVES = ("%Y", "%y", "%m", "%b", "%B", "%d", "%j", "%U", "%W", "%V", "%x", "%c")


def allows_rollover(fmt: str) -> bool:
    """A time of day without a date may pass midnight: 23:00 then 00:00 is one hour on."""
    return fmt == ELAPSED_SECONDS or not any(directive in fmt for directive in _DATE_DIRECTIVES)


def parse_timestamp(value: object, fmt: str) -> float:
    """Seconds, as NSS counts them: elapsed seconds truncated; dates since the epoch (naive = UTC);
    times of day since midnight. Raises ``ValueError`` (or ``TypeError``) on a value it cannot read."""
    if fmt == ELAPSED_SECONDS:
        return int(float(value))  # type: ignore[arg-type]  # NSS's int(float(v)): str, int or float
    return _seconds(datetime.strptime(str(value), fmt), time_of_day=allows_rollover(fmt))


def _seconds(parsed: datetime, *, time_of_day: bool) -> float:
    """Since midnight for a time of day; else since the epoch (a naive value is UTC, as in NSS)."""
    if time_of_day:
        return parsed.hour * 3600 + parsed.minute * 60 + parsed.second + parsed.microsecond / 1e6
    if parsed.tzinfo is not None:
        return parsed.timestamp()
    return calendar.timegm(parsed.timetuple()) + parsed.microsecond / 1e6


def parse_bound(value: object, fmt: str) -> float | None:
    """A run's ``start_timestamp``/``stop_timestamp``, or None when it has none.

    NSS stores them as ``str(pandas.Timestamp)`` ("2024-01-01 00:00:00") but parses them with the
    table's own format, so for any other format no group ever reaches its stop (reference §8, bug 8).
    We read the table's format first, then that stored ISO form.
    """
    if value is None:
        return None
    try:
        return parse_timestamp(value, fmt)
    except (TypeError, ValueError):
        pass
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return _seconds(parsed, time_of_day=allows_rollover(fmt) and fmt != ELAPSED_SECONDS)


def step_problem(previous: float | None, current: float, interval: float, *, rollover: bool) -> StepProblem | None:
    """None when ``current`` is exactly one ``interval`` after ``previous`` (or is the first value);
    ``"backwards"`` when it is not later (a time of day may pass midnight instead); else ``"gap"``."""
    if previous is None:
        return None
    if rollover:
        while current <= previous:
            current += DAY
    elif current <= previous:
        return "backwards"
    return None if current - previous == interval else "gap"


def expected_records(start: float | None, stop: float | None, interval: float | None) -> int:
    """Records a group has from start to stop at the interval, both ends in (0 when unknown)."""
    if start is None or stop is None or not interval or stop < start:
        return 0
    return int((stop - start) // interval) + 1


def samples_per_prompt(active_groups: int) -> int:
    """NSS's ``n``: 10 samples for up to 10 active groups, down to 5 from 17 groups on."""
    return min(10, max(SAMPLES_PER_PROMPT, MAX_PROMPTS_PER_BATCH // max(1, active_groups)))


def prefill(records: Sequence[Mapping[str, Any]]) -> str:
    """A group's last records as the prompt's tail, in the training text's own form.

    NSS writes later prefills with ``json.dumps`` spacing (``", "``, ``": "``) and the first one with
    a leading space and blank lines, neither of which the adapter saw in training (reference §8,
    bug 5): we write compact JSON lines, as training did (pandas ``to_json``, non-ASCII kept).
    """
    return "".join(json.dumps(dict(r), ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)


# -- NSS 0.1.16's protocol: token prompts that start each group at a partial first record ------------


def format_bound(value: str | int, fmt: str) -> str | int:
    """A start or stop bound written in the table's own format, as training wrote the column.

    NSS 0.1.16 stores a deterministic run's bounds as ``str(pandas.Timestamp)`` and seeds each
    group's first record with that spelling, so a table in any other format (``%m/%d/%Y``) gets a
    first record it never saw and every group fails (reference nss-0.1.16 T11). A bound that
    already reads in the table's format is kept as written; elapsed seconds become an int.
    """
    if fmt == ELAPSED_SECONDS:
        return int(float(value))
    try:
        parse_timestamp(value, fmt)
        return value
    except (TypeError, ValueError):
        pass
    seconds = parse_bound(value, fmt)
    if seconds is None:
        return value
    if allows_rollover(fmt):
        return (datetime(1900, 1, 1) + timedelta(seconds=seconds)).strftime(fmt)
    return datetime.fromtimestamp(seconds, tz=UTC).replace(tzinfo=None).strftime(fmt)


def _coerce(types: Sequence[str], value: object) -> object:
    """NSS's ``_coerce_prefix_value``: a seed value in its column's JSON type (group ids are keys,
    so often strings; a bound may be a string where the schema says number)."""
    if "integer" in types:
        return int(value)  # type: ignore[call-overload]  # ValueError/TypeError: the caller's
    if "number" in types:
        return float(value)  # type: ignore[arg-type]
    if "string" in types and value is not None:
        return str(value)
    return value


def _types(schema: Mapping[str, Any], column: str) -> list[str]:
    declared = schema.get("properties", {}).get(column, {}).get("type")
    if isinstance(declared, str):
        return [declared]
    return [t for t in declared if isinstance(t, str)] if isinstance(declared, list) else []


def partial_record_prefix(columns: Sequence[str], schema: Mapping[str, Any], seed: Mapping[str, object]) -> str:
    """A group's first record up to the opening quote of its next field: ``{"g":"a","ts":1,"``.

    As NSS 0.1.16 (``build_partial_record_prefix``): the seed columns (the group, unless it is
    NSS's pseudo group, then the time) must open the schema; values take their column's type and
    are written as training wrote records (pandas ``to_json``: compact, ``/`` escaped, non-ASCII
    kept). Raises ``ValueError`` when the schema does not start with them.
    """
    names = list(seed)
    if list(columns[: len(names)]) != names:
        raise ValueError(f"the schema's columns do not begin with {names} (the group and time columns)")
    values = {c: _coerce(_types(schema, c), seed[c]) for c in names}
    line = pd.DataFrame([values]).to_json(orient="records", lines=True, force_ascii=False).rstrip("\n")
    return line[:-1] + ',"'


def history(texts: Sequence[str]) -> list[str]:
    """The prompt's context after the first record: the last records exactly as the model wrote
    them, one segment each (training tokenized each newline-ended record on its own)."""
    return [f"{text}\n" for text in texts]


def prompt_token_ids(prompt_ids: Sequence[int], bos_token_id: int, context: Sequence[Sequence[int]]) -> list[int]:
    """NSS 0.1.16's training boundary: the prompt's ids (its own BOS/EOS already applied), the
    sequence BOS, then each context segment's ids as tokenized on its own."""
    return [*prompt_ids, bos_token_id, *(token for segment in context for token in segment)]
