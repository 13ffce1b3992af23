"""Batch, error statistics, stopping, adaptive prompt counts, results and data actions."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from remote_synth import ConfigError, GenerateJobResults, GenerationError, GenerationStatus
from remote_synth.nss import (
    Batch,
    GenerationBatches,
    GenerationStopCondition,
    ParsedResponse,
    RunningStatistics,
    error_statistics,
    normalize_dataframe,
)
from remote_synth.nss.batch import group_error_messages


def response(valid: int, invalid: int, error: tuple[str, str] = ("bad", "type")) -> ParsedResponse:
    return ParsedResponse(
        valid_records=[{"a": i, "b": f"x{i}"} for i in range(valid)],
        invalid_records=["{}"] * invalid,
        errors=[error] * invalid,
    )


def batch(*responses: ParsedResponse) -> Batch:
    b = Batch()
    for r in responses:
        b.add_response(r)
    return b


def test_batch_counts() -> None:
    b = Batch(lambda i, text: response(3, 1))
    b.process(0, "ignored")
    assert (b.num_prompts, b.num_valid_records, b.num_invalid_records) == (1, 3, 1)
    assert b.valid_record_fraction == 0.75 and b.stopping_metric == 0.25
    b.process(1, "ignored")
    assert len(b.to_dataframe()) == 6
    assert Batch().to_dataframe() is None
    assert batch(response(0, 0)).stopping_metric == 1.0


def test_error_statistics_summary_shares() -> None:
    errors = [("m", "type")] * 11 + [("m", "enum")] * 5 + [("m", "Invalid JSON")] * 3 + [("m", "required")]
    stats = error_statistics(errors, detailed_errors=False)
    assert list(stats.index) == ["Invalid field type", "Invalid field value", "Invalid JSON", "Missing required field"]
    assert list(stats["Percentage"]) == pytest.approx([0.55, 0.25, 0.15, 0.05])


def test_error_statistics_groups_detailed_messages() -> None:
    errors = [(f"{i} is not one of [5, 6]", "enum") for i in [0, 1, 10, 2, 3, 4]]
    errors += [("'a' is a required property", "required"), ("'b' is a required property", "required")]
    errors += [("x" * 120, "type")]
    stats = error_statistics(errors, detailed_errors=True)
    assert "Grouped error message: 0/1/10/2/3/... is not one of [5, 6]" in stats.index
    assert "Grouped error message: 'a'/'b' is a required property" in stats.index
    assert ("x" * 120) in stats.index  # not a grouped message: left whole


def test_grouping_survives_the_common_text_twice() -> None:
    msgs = ["'a is not one of b' is not one of ['x']", "'c' is not one of ['x']"]
    out = group_error_messages(msgs, " is not one of ")
    assert len(out) == 2  # NSS raised ValueError here


def test_singleton_grouped_messages_are_truncated() -> None:
    msg = "'" + "y" * 120 + "' is a required property"
    assert group_error_messages([msg], " is a required property") == [msg[:100] + "..."]


def test_data_config_rows_survive_truncation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("remote_synth.nss.batch.LOG_NUM_ERRORS", 3)
    errors = [(str(i), f"k{i}") for i in range(6) for _ in range(10 - i)]
    errors += [("Failed data_config validation due to [x]",) * 2] * 5
    stats = error_statistics(errors, detailed_errors=False)
    assert "Failed data_config validation due to [x]" in stats.index
    assert len(stats) == 4
    assert batch(ParsedResponse(errors=errors)).num_data_config_rejected_records == 5


def test_equal_shares_have_a_stable_order() -> None:
    errors = [("m", k) for k in ["zeta", "alpha", "mid"]]
    first = list(error_statistics(errors, False).index)
    assert first == sorted(first)


def test_log_summary_has_real_messages_and_no_values(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="remote_synth")
    secret = ("'Jane Secret' is not one of ['a']", "enum")
    b = batch(response(1, 10, secret))
    b.log_summary(detailed_errors=False)
    assert len(caplog.records) == 2
    assert "valid fraction 0.09" in caplog.records[0].getMessage()
    assert caplog.records[0].summary["valid_record_fraction"] == 0.09
    assert all("Jane" not in r.getMessage() for r in caplog.records)


def test_running_statistics_welford() -> None:
    s = RunningStatistics()
    for v in (1, 3, -0.1):
        s.update(v)
    assert s.mean == pytest.approx(1.3)
    assert s.sum_sq_diffs == pytest.approx(4.94)
    assert s.stddev == pytest.approx(1.5716, abs=1e-4)


def test_stop_condition_needs_consecutive_values() -> None:
    c = GenerationStopCondition(0.8, 3)
    seen = []
    for v in (0.9, 0.9, 0.5, 0.9, 0.9, 0.9):
        c.update(v)
        seen.append(c.reached)
    assert seen == [False] * 5 + [True]
    assert c.last_value == 0.9


def test_first_empty_batch_stops() -> None:
    b = GenerationBatches(10, invalid_fraction_threshold=0.8, patience=3)
    b.add_batch(batch(response(0, 5)))
    assert b.status is GenerationStatus.STOP_NO_RECORDS
    with pytest.raises(GenerationError, match="stopped prematurely"):
        b.raise_for_status()


def test_without_stop_condition_any_empty_batch_stops() -> None:
    b = GenerationBatches(10)
    b.add_batch(batch(response(2, 0)))
    b.add_batch(batch(response(0, 0)))
    assert b.status is GenerationStatus.STOP_NO_RECORDS


def test_metric_stop_after_a_perfect_batch_takes_six_bad_ones() -> None:
    b = GenerationBatches(1000, invalid_fraction_threshold=0.8, patience=3)
    b.add_batch(batch(response(5, 0)))
    statuses = []
    for _ in range(6):
        b.add_batch(batch(response(0, 5)))
        statuses.append(b.status)
    assert statuses[:5] == [GenerationStatus.IN_PROGRESS] * 5
    assert statuses[5] is GenerationStatus.STOP_METRIC_REACHED
    with pytest.raises(GenerationError, match="at or above 80.00%"):
        b.raise_for_status()


@pytest.mark.parametrize(
    ("threshold", "patience", "fractions", "status"),
    [
        (0.01, 1, [(1, 1)], GenerationStatus.STOP_METRIC_REACHED),
        (0.2, 3, [(1, 0), (0, 1), (1, 0)], GenerationStatus.IN_PROGRESS),
        (0.9, 3, [(1, 1), (1, 1), (1, 1)], GenerationStatus.IN_PROGRESS),
        # patience ≤ 0: NSS stops only on a value at or above the threshold, not at once
        (0.8, 0, [(1, 0), (1, 0), (1, 0)], GenerationStatus.IN_PROGRESS),
        (0.6, 0, [(1, 0), (0, 5)], GenerationStatus.IN_PROGRESS),
        (0.5, 0, [(1, 0), (0, 5)], GenerationStatus.STOP_METRIC_REACHED),
        (0.6, -1, [(1, 0), (0, 5), (0, 5)], GenerationStatus.STOP_METRIC_REACHED),
    ],
)
def test_stop_metric_cases(threshold: float, patience: int, fractions: list, status: GenerationStatus) -> None:
    b = GenerationBatches(100, invalid_fraction_threshold=threshold, patience=patience)
    for valid, invalid in fractions:
        b.add_batch(batch(response(valid, invalid)))
    assert b.status is status


def test_threshold_and_patience_come_together() -> None:
    with pytest.raises(ConfigError):
        GenerationBatches(10, invalid_fraction_threshold=0.5)


def test_next_prompt_count() -> None:
    b = GenerationBatches(None)
    assert b.get_next_num_prompts() == 100
    b = GenerationBatches(20)
    assert b.get_next_num_prompts() == 10  # NSS 0.1.16's probe
    b.add_batch(batch(response(3, 0)))
    assert b.get_next_num_prompts() == 16  # round(17 / 3) + 10
    b = GenerationBatches(14)
    b.add_batch(batch(response(4, 0)))
    assert b.get_next_num_prompts() == 12  # round(2.5) == 2, banker's rounding
    big = GenerationBatches(10_000)
    big.add_batch(batch(response(1, 0)))
    assert big.get_next_num_prompts() == 500  # the adaptive cap: 10,000 // 20
    assert GenerationBatches(3).get_next_num_prompts() == 10 and GenerationBatches(3, max_num_prompts_per_batch=4)
    assert GenerationBatches(3, max_num_prompts_per_batch=4).get_next_num_prompts() == 4


@pytest.mark.parametrize(("target", "cap"), [(None, 100), (1, 100), (1000, 100), (2500, 125), (5000, 250),
                                             (100_000, 2000)])  # fmt: skip
def test_the_cap_grows_with_the_target(target: int | None, cap: int) -> None:
    assert GenerationBatches(target).max_num_prompts_per_batch == cap


def _truncated(prompts: int, valid: int = 0, *, all_length: bool = True) -> Batch:
    b = Batch(lambda i, text: response(valid, 1))
    for i in range(prompts):
        b.process(i, "", "length" if all_length or i else "stop", completion_tokens=7)
    return b


def test_a_first_batch_cut_at_max_tokens_is_inconclusive_and_probed_again() -> None:
    b = GenerationBatches(1000, invalid_fraction_threshold=0.8, patience=2)
    b.add_batch(_truncated(10))
    assert b.status is GenerationStatus.IN_PROGRESS and b.get_next_num_prompts() == 10
    assert b.num_completion_tokens == 70
    b.add_batch(_truncated(10))
    assert b.status is GenerationStatus.STOP_METRIC_REACHED  # patience decides, not the first batch


def test_a_first_batch_with_one_natural_end_and_no_record_stops() -> None:
    b = GenerationBatches(1000, invalid_fraction_threshold=0.8, patience=2)
    b.add_batch(_truncated(10, all_length=False))
    assert b.status is GenerationStatus.STOP_NO_RECORDS
    later = GenerationBatches(1000, invalid_fraction_threshold=0.8, patience=5)
    later.add_batch(_truncated(10, valid=1))
    later.add_batch(_truncated(10, all_length=False))
    assert later.status is GenerationStatus.IN_PROGRESS
    assert later.get_next_num_prompts() == min(100, round(999 / 0.05) + 10)
    no_rule = GenerationBatches(1000)
    no_rule.add_batch(_truncated(10))
    assert no_rule.status is GenerationStatus.STOP_NO_RECORDS  # without a stop condition, any empty batch


def test_job_complete() -> None:
    b = GenerationBatches(5)
    b.add_batch(batch(response(5, 0)))
    assert b.job_complete() is GenerationStatus.COMPLETE
    b = GenerationBatches(50)
    b.add_batch(batch(response(5, 0)))
    assert b.job_complete() is GenerationStatus.INCOMPLETE
    assert GenerationBatches(None).job_complete() is GenerationStatus.COMPLETE


def test_results_dataframe_columns_order_and_truncation() -> None:
    b = GenerationBatches(4)
    b.add_batch(batch(response(3, 1), response(0, 0)))
    b.add_batch(batch(response(3, 0)))
    df = b.to_dataframe(["b", "a", "never_seen"])
    assert list(df.columns) == ["b", "a", "never_seen"]
    assert len(df) == 6 and df["never_seen"].isna().all()
    assert len(b.to_dataframe(["a"], max_num_records=2)) == 2
    assert len(b.to_dataframe(["a"], max_num_records=0)) == 6
    results = GenerateJobResults.from_batches(b, 4, ["a", "b"], elapsed_time=1.5)
    assert (results.num_valid_records, results.num_invalid_records, results.num_prompts) == (6, 1, 3)
    assert len(results.df) == 4 and results.valid_record_fraction == pytest.approx(6 / 7)
    assert results.batch_valid_record_fractions == pytest.approx([0.75, 1.0])
    assert results.elapsed_time == 1.5


def test_empty_results_have_the_schema_columns() -> None:
    assert list(GenerationBatches(3).to_dataframe(["a", "b"]).columns) == ["a", "b"]


def test_data_actions_contract() -> None:
    calls = []

    def action(batch_df: pd.DataFrame, accumulated: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        calls.append((batch_df.copy(), accumulated.copy()))
        rejected = batch_df[batch_df["a"] % 2 == 1].assign(__nss_reject_reason="odd")
        return batch_df[batch_df["a"] % 2 == 0], rejected

    b = GenerationBatches(10, invalid_fraction_threshold=0.9, patience=3, data_actions_fn=action)
    b.add_batch(batch(response(3, 0), response(2, 1)))
    assert list(calls[0][0].columns)[-1] == "__nss__idx"
    assert list(calls[0][0]["__nss__idx"]) == [0, 1, 2, 3, 4]
    assert calls[0][1].empty and list(calls[0][1].columns) == list(calls[0][0].columns)
    assert b.num_valid_records == 3 and b.num_invalid_records == 3
    b.add_batch(batch(response(2, 0)))
    assert len(calls[1][1]) == 3  # everything accepted before
    df = b.to_dataframe(["a", "b"])
    assert list(df["a"]) == [0, 2, 0, 0]


def test_data_actions_must_account_for_every_record() -> None:
    def lossy(batch_df: pd.DataFrame, accumulated: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        return batch_df.iloc[:1], batch_df.iloc[0:0].assign(__nss_reject_reason="x")

    b = GenerationBatches(10, data_actions_fn=lossy)
    with pytest.raises(ConfigError, match="every record"):
        b.add_batch(batch(response(3, 0)))


def test_data_action_rejections_count_as_invalid_with_reason() -> None:
    def reject_all(batch_df: pd.DataFrame, accumulated: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        return batch_df.iloc[0:0], batch_df.assign(__nss_reject_reason="date_constraint")

    b = Batch()
    b.add_response(response(2, 0))
    GenerationBatches(10, data_actions_fn=reject_all).add_batch(b)
    assert b.errors == [("Failed data_config validation due to [date_constraint]",) * 2] * 2
    assert b.num_valid_records == 0 and b.num_invalid_records == 2


def test_normalize_dataframe_like_a_csv_reader() -> None:
    df = normalize_dataframe(
        pd.DataFrame.from_records(
            [
                {"s": "007", "n": "NA", "l": [1, 2], "b": True, "t": "a\nb"},
                {"s": "8", "n": "x", "l": {"k": 1}, "b": False},
            ]
        )
    )
    assert list(df["s"]) == [7, 8]
    assert pd.isna(df["n"][0])
    assert list(df["l"]) == ["[1, 2]", "{'k': 1}"]
    assert df["b"].dtype == bool
    assert df["t"][0] == "a\nb" and pd.isna(df["t"][1])


def test_adding_a_batch_does_not_touch_earlier_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-batch work is constant: no concatenation or re-summing of earlier batches."""
    b = GenerationBatches(10**9, invalid_fraction_threshold=0.99, patience=3)
    for _ in range(50):
        b.add_batch(batch(response(2, 1)))
    calls = []
    real_concat = pd.concat
    monkeypatch.setattr(pd, "concat", lambda *a, **k: calls.append(1) or real_concat(*a, **k))
    b.add_batch(batch(response(2, 1)))
    assert calls == []
    assert (b.num_valid_records, b.num_invalid_records, b.num_prompts) == (102, 51, 51)
    assert len(b.to_dataframe(["a", "b"])) == 102 and calls == [1]


def test_seeded_batches_count_like_nss() -> None:
    b = GenerationBatches(
        10, [batch(response(2, 1)), batch(response(0, 3))], invalid_fraction_threshold=0.5, patience=1
    )
    assert (b.num_batches, b.num_valid_records, b.num_invalid_records, b.num_prompts) == (2, 2, 4, 2)
    assert b.status is GenerationStatus.IN_PROGRESS
    assert len(b.to_dataframe(["a"])) == 2


def test_results_carry_nss_0_1_16_token_fields_from_the_server_usage() -> None:
    b = GenerationBatches(1000)
    b.add_batch(_truncated(4, valid=1, all_length=False))
    results = GenerateJobResults.from_batches(b, None, ["a", "b"], elapsed_time=2.0)
    assert (results.num_completion_tokens, results.tokens_per_prompt, results.tokens_per_second) == (28, 7.0, 14.0)
    assert results.num_valid_record_tokens is None and results.tokenization_overhead_sec is None
    silent = GenerationBatches(1000)
    silent.add_batch(batch(response(1, 0)))
    none = GenerateJobResults.from_batches(silent, None, ["a", "b"], elapsed_time=2.0)
    assert none.num_completion_tokens is None and none.tokens_per_second is None  # no usage seen: None, as NSS
