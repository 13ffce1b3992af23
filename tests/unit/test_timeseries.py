"""Time in time-series runs: NSS's rules (reference §2.6, §5) and the fixes of its bugs 5 and 8."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remote_synth.nss.timeseries import (
    ELAPSED_SECONDS,
    MAX_ACTIVE_GROUPS,
    allows_rollover,
    expected_records,
    parse_bound,
    parse_timestamp,
    prefill,
    samples_per_prompt,
    step_problem,
)


@pytest.mark.parametrize(("active", "n"), [(1, 10), (10, 10), (11, 9), (12, 8), (13, 7), (14, 7), (15, 6),
                                           (16, 6), (17, 5), (20, 5)])  # fmt: skip
def test_samples_per_prompt_by_active_groups_as_nss(active: int, n: int) -> None:
    assert samples_per_prompt(active) == n


def test_at_most_twenty_groups_are_active() -> None:
    assert MAX_ACTIVE_GROUPS == 20


@pytest.mark.parametrize(("fmt", "rollover"), [
    (ELAPSED_SECONDS, True), ("%H:%M:%S", True), ("%H:%M", True),
    ("%Y-%m-%d %H:%M:%S", False), ("%m/%d/%Y", False), ("%d %b %H:%M", False), ("%j %H", False),
])  # fmt: skip
def test_rollover_only_without_a_date(fmt: str, rollover: bool) -> None:
    assert allows_rollover(fmt) is rollover


@pytest.mark.parametrize(("value", "fmt", "seconds"), [
    ("3600.9", ELAPSED_SECONDS, 3600),           # truncated, as NSS's int(float(v))
    (7200, ELAPSED_SECONDS, 7200),
    ("1970-01-02 00:00:00", "%Y-%m-%d %H:%M:%S", 86400),  # naive dates are UTC
    ("01/02/1970", "%m/%d/%Y", 86400),
    ("1970-01-01T01:00:00+0100", "%Y-%m-%dT%H:%M:%S%z", 0),  # aware: its own offset
    ("01:30:15", "%H:%M:%S", 5415),              # times of day: since midnight
])  # fmt: skip
def test_timestamps_in_seconds(value: object, fmt: str, seconds: float) -> None:
    assert parse_timestamp(value, fmt) == seconds


@pytest.mark.parametrize(("value", "fmt"), [("yesterday", "%Y-%m-%d"), ("abc", ELAPSED_SECONDS), (None, "%H:%M")])
def test_unreadable_timestamps_raise(value: object, fmt: str) -> None:
    with pytest.raises((ValueError, TypeError)):
        parse_timestamp(value, fmt)


@pytest.mark.parametrize("fmt", ["%m/%d/%Y %H:%M", "%Y-%m-%dT%H:%M:%S", "%d.%m.%Y %H:%M:%S"])
def test_stop_timestamps_stored_by_pandas_are_read_whatever_the_table_format(fmt: str) -> None:
    """NSS bug 8: the bound is str(pandas.Timestamp) but parsed with the table's format (None, so no stop)."""
    stored = "1970-01-02 00:00:00"
    assert parse_bound(stored, fmt) == 86400
    assert parse_bound("01/02/1970 00:00", "%m/%d/%Y %H:%M") == 86400  # the table's own form still works
    assert parse_bound(None, fmt) is None and parse_bound("never", fmt) is None


def test_each_step_is_exactly_one_interval() -> None:
    assert step_problem(None, 123.0, 60, rollover=False) is None  # a first record: anything readable
    assert step_problem(0, 60, 60, rollover=False) is None
    assert step_problem(0, 120, 60, rollover=False) == "gap"
    assert step_problem(60, 0, 60, rollover=False) == step_problem(60, 60, 60, rollover=False) == "backwards"
    assert step_problem(23 * 3600 + 1800, 0, 1800, rollover=True) is None  # 23:30 → 00:00 passes midnight
    assert step_problem(23 * 3600 + 1800, 3600, 1800, rollover=True) == "gap"


@given(start=st.integers(0, 10**9), steps=st.integers(0, 10_000), interval=st.integers(1, 86_400))
def test_expected_records_count_both_ends(start: int, steps: int, interval: int) -> None:
    stop = start + steps * interval
    assert expected_records(start, stop, interval) == steps + 1
    assert expected_records(start, stop + interval - 1, interval) == steps + 1


def test_expected_records_of_three_hours_hourly_is_four_and_unknown_is_zero() -> None:
    assert expected_records(0, 3 * 3600, 3600) == 4
    assert expected_records(None, 3600, 3600) == 0 and expected_records(0, None, 60) == 0
    assert expected_records(0, 60, None) == 0 and expected_records(60, 0, 60) == 0


def test_prefill_is_the_training_form_compact_json_lines() -> None:
    """NSS bug 5: later prefills used json.dumps spacing, the first a leading space and blank lines."""
    records = [{"device": "a", "t": "00:00", "v": 1.5}, {"device": "a", "t": "00:10", "v": "é"}]
    text = prefill(records)
    assert text == '{"device":"a","t":"00:00","v":1.5}\n{"device":"a","t":"00:10","v":"é"}\n'
    assert [json.loads(line) for line in text.splitlines()] == records
