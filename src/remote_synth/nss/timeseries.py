"""Time in NSS's time-series runs: timestamps, their steps, and how many samples a group's prompt gets.

The pure rules of NSS's ``TimeseriesBackend`` and ``TimeSeriesDataProcessor`` (reference §2.6, §5),
kept apart from requests and records so that the job producer (issue 10) and its tests share them.
Where NSS is wrong, the fix is named (reference §8, bug 8) and listed in ``docs/deviations.md``.
"""

from __future__ import annotations

import calendar
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

__all__ = [
    "ELAPSED_SECONDS",
    "MAX_ACTIVE_GROUPS",
    "allows_rollover",
    "expected_records",
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
