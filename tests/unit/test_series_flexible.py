"""NSS 0.1.16's flexible time-series mode: groups of differing lengths, numbered by an index column
and ended by a marker row (nss-0.1.16 §3.9; ``nss/flexible.py``)."""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from checks import journal_then_resume
from fakes.prompt_vllm import PromptVllm, after_last_bos, last_record
from fakes.vllm_core import VllmCore, byte_text

from remote_synth import GenerationStatus, RemoteBackend, RemoteSettings, RunDirError
from remote_synth.demo.layout import write_run_dir
from remote_synth.nss.flexible import FlexibleRules, select

FMT = "%Y-%m-%d %H:%M"
START = datetime(2026, 1, 1)
BOS, EOS = 1, 2
SCHEMA = {
    "type": "object",
    "properties": {
        "device": {"type": "string"},
        "_time_idx": {"type": "integer"},
        "ts": {"type": "string"},
        "v": {"type": "integer", "minimum": 0, "maximum": 100},
        "_is_last_row": {"type": "boolean"},
    },
    "required": ["device", "_time_idx", "ts", "v", "_is_last_row"],
}
LENGTHS = {"a": 3, "b": 5}
"""How long each group is in the source table (the marker is on its last row)."""
MAX_RECORDS = 6


def stamp(hour: int) -> str:
    return (START + timedelta(hours=hour)).strftime(FMT)


def write_run(path: Path, groups: list[Any] | None = None, schema: dict = SCHEMA, **flexible: Any) -> Path:
    """A run as NSS 0.1.16 saves a flexible one: the index is the time (elapsed, one apart, 0 to the
    cap), the source timestamp moved to the controls."""
    controls = {"index_column": "_time_idx", "marker_column": "_is_last_row", "max_records": MAX_RECORDS,
                "source_timestamp_column": "ts", "source_timestamp_format": FMT, "source_interval_seconds": 3600,
                **flexible}  # fmt: skip
    settings = {"timestamp_column": "_time_idx", "timestamp_format": "elapsed_seconds",
                "timestamp_interval_seconds": 1, "start_timestamp": 0, "stop_timestamp": MAX_RECORDS - 1}  # fmt: skip
    grouped = "device" in schema["properties"]
    data = {"group_training_examples_by": "device" if grouped else "__nss_sequence_id",
            "order_training_examples_by": "_time_idx"}  # fmt: skip
    source = ["ts", "device", "v"] if grouped else ["ts", "v"]
    return write_run_dir(path, schema, base_model="base", base_max_seq_length=1024, layout="0.1.16", data=data,
                         generation={"num_records": 8, "temperature": 0.7}, time_series=settings,
                         timeseries_group_values=groups if groups is not None else ["a", "b"], source_columns=source,
                         flexible=controls, bos=("<s>", BOS), eos=("</s>", EOS))  # fmt: skip


Writer = Callable[[str, int, int, str], str]
"""(group, index of the first row to write, sample number, how the context starts) -> completion."""


def row(device: str, index: int, *, last: bool | None = None, hour: int | None = None) -> dict[str, Any]:
    end = index == LENGTHS.get(device, MAX_RECORDS) - 1 if last is None else last
    group = {"device": device} if device else {}  # "": a table without groups
    return {**group, "_time_idx": index, "ts": stamp(index if hour is None else hour), "v": index,
            "_is_last_row": end}  # fmt: skip


def lines(rows: list[dict[str, Any]], started: str) -> str:
    """Rows as completion text; after a partial first record, only its remaining fields."""
    texts = [json.dumps(r, separators=(",", ":")) for r in rows]
    if started and texts:
        texts[0] = texts[0][len(started) :]
    return "\n".join(texts) + "\n"


def to_the_end(count: int = 2) -> Writer:
    """Up to ``count`` rows of the group's source length, the last one marked."""

    def write(device: str, index: int, sample: int, started: str) -> str:
        end = LENGTHS.get(device, MAX_RECORDS)
        return lines([row(device, i) for i in range(index, min(index + count, end))], started)

    return write


class FlexibleVllm(PromptVllm):
    """vLLM on token-id prompts that continues each group from its context after the last BOS."""

    finish_reason = "stop"
    tokens_each = 10

    def __init__(self, writer: Writer) -> None:
        super().__init__(VllmCore(prompt_tokens=40, byte_tokens=True))
        self.writer = writer

    def complete(self, ids: list[int], sample: int) -> str:
        context = after_last_bos(ids, BOS)
        if context.endswith(',"'):  # the partial first record
            found = re.match(r'\{(?:"device":"(\w+)",)?"_time_idx":(\d+),"$', context)
            assert found is not None, context
            return self.writer(found.group(1) or "", int(found.group(2)), sample, context)
        last = last_record(context)
        return self.writer(last.get("device", ""), last["_time_idx"] + 1, sample, "")


def backend(run: Path, fake: FlexibleVllm) -> RemoteBackend:
    settings = RemoteSettings(base_url="http://fake:8000", adapter_name="nss-adapter")
    return RemoteBackend(run, settings=settings, transport=httpx.MockTransport(fake))


def test_each_group_ends_at_its_marker_and_the_output_is_the_source_table(tmp_path: Path) -> None:
    fake = FlexibleVllm(to_the_end(2))
    with backend(write_run(tmp_path / "r"), fake) as b:
        results = b.generate()
    assert results.status is GenerationStatus.COMPLETE
    assert list(results.df.columns) == ["ts", "device", "v"]  # the controls dropped, the source's order
    for device, length in LENGTHS.items():
        rows = results.df[results.df["device"] == device]
        assert list(rows["ts"]) == [stamp(h) for h in range(length)]
    assert results.num_invalid_records == 0
    first = byte_text(fake.bodies[0]["prompt"][0])
    assert first.endswith('{"device":"a","_time_idx":0,"')  # the partial first record starts at index 0
    metrics = json.loads(b.artifacts["flexible_timeseries_metrics.json"])
    assert metrics["status"] == "complete" and metrics["sequence_max_records"] == MAX_RECORDS
    assert [(g["group"], g["reason"], g["rows"]) for g in metrics["groups"]] == [("a", "terminal", 3),
                                                                                  ("b", "terminal", 5)]  # fmt: skip
    assert metrics["aggregate"]["reason_counts"] == {"terminal": 2, "cap": 0, "failure": 0}
    assert metrics["aggregate"]["prompts"] == len(fake.bodies)  # one request per group and batch (n samples)
    internal = b.artifacts["synthetic_data_internal.csv"].splitlines()
    assert internal[0] == "device,_time_idx,ts,v,_is_last_row" and len(internal) == 1 + 8
    raw = [json.loads(line) for line in b.artifacts["raw_generations.jsonl"].splitlines()]
    assert len(raw) == sum(len(body["prompt"]) for body in fake.bodies)
    assert raw[0]["group"] == "a" and raw[0]["prompt"] == 1 and raw[0]["prompt_tokens"] > 0
    assert raw[1]["prompt_tokens"] == 0  # a request's prompt is counted once


def test_a_group_that_never_marks_its_end_stops_at_the_cap_and_rows_past_it_are_dropped(tmp_path: Path) -> None:
    def endless(device: str, index: int, sample: int, started: str) -> str:
        return lines([row(device, i, last=False) for i in range(index, index + 4)], started)

    with backend(write_run(tmp_path / "r", groups=["a"]), FlexibleVllm(endless)) as b:
        results = b.generate()
    assert list(results.df["v"]) == list(range(MAX_RECORDS))  # 0-3, then 4-5 of 4-7
    assert results.num_invalid_records == 0  # 6 and 7 were past the cap: not wanted, not invalid
    assert json.loads(b.artifacts["flexible_timeseries_metrics.json"])["groups"][0]["reason"] == "cap"


def test_the_first_sample_that_ends_the_group_is_kept(tmp_path: Path) -> None:
    def varied(device: str, index: int, sample: int, started: str) -> str:
        if sample < 3:  # three samples that go on without ending, then one that ends
            return lines([row(device, i, last=False) for i in range(index, index + 2)], started)
        return lines([row(device, index, last=True)], started)

    with backend(write_run(tmp_path / "r", groups=["a"]), FlexibleVllm(varied)) as b:
        results = b.generate()
    assert list(results.df["v"]) == [0]  # the most rows would have been two


def test_a_row_off_the_index_ends_the_sample_and_what_follows_is_invalid(tmp_path: Path) -> None:
    def skipping(device: str, index: int, sample: int, started: str) -> str:
        return lines([row(device, index), row(device, index + 2), row(device, index + 3)], started)

    with backend(write_run(tmp_path / "r", groups=["b"]), FlexibleVllm(skipping)) as b:
        results = b.generate()
    assert list(results.df["v"]) == [0, 1, 2, 3, 4]  # one row a batch; the fifth is marked
    assert results.num_invalid_records == 5 * 2  # the processor's step check comes first, as in NSS
    rules = FlexibleRules("_time_idx", "_is_last_row", MAX_RECORDS)
    kept = rules.keep([row("b", 0), row("b", 2), row("b", 3)], 0, None, lambda r: True)
    assert [e for _, e in kept.invalid] == [("Generated sequence index 2 does not match expected index 1", "TimeSeries"),
                                            ("Generated row follows an invalid sequence row", "TimeSeries")]  # fmt: skip


@pytest.mark.parametrize(("hours", "error"), [
    ([0, 2], "Generated source timestamp does not follow timestamp_interval_seconds"),
    ([1, 0], "Generated source timestamp decreases within the group"),
])  # fmt: skip
def test_the_source_timestamp_keeps_its_order_and_interval(hours: list[int], error: str) -> None:
    rules = FlexibleRules("_time_idx", "_is_last_row", 9, "ts", FMT, 3600)
    rows = [row("a", i, hour=h, last=False) for i, h in enumerate(hours)] + [row("a", 2, last=False)]
    kept = rules.keep(rows, 0, None, lambda r: True)
    assert kept.rows == rows[:1] and kept.end is None
    assert [e for _, e in kept.invalid] == [(error, "TimeSeries"),
                                            ("Generated row follows an invalid sequence row", "TimeSeries")]  # fmt: skip


def test_an_unreadable_source_timestamp_is_invalid_and_without_an_interval_any_later_one_is_good() -> None:
    free = FlexibleRules("_time_idx", "_is_last_row", 9, "ts", FMT, None)
    rows = [row("a", 0, hour=0, last=False), row("a", 1, hour=5, last=False), {**row("a", 2), "ts": "soon"}]
    kept = free.keep(rows, 0, None, lambda r: True)
    assert kept.rows == rows[:2] and kept.last_source == calendar.timegm((START + timedelta(hours=5)).timetuple())
    assert kept.invalid == [(rows[2], ("Generated source timestamp does not match the source timestamp format",
                                       "TimeSeries"))]  # fmt: skip


def test_selection_prefers_an_end_then_the_first_with_rows() -> None:
    rules = FlexibleRules("_time_idx", "_is_last_row", 9)
    going = rules.keep([row("a", 0, last=False), row("a", 1, last=False)], 0, None, lambda r: True)
    ending = rules.keep([row("a", 0, last=True)], 0, None, lambda r: True)
    empty = rules.keep([], 0, None, lambda r: True)
    assert select([empty, going, ending]) == 2
    assert select([empty, going, going]) == 1
    assert select([empty, empty]) is None


def test_a_table_without_groups_is_one_stream(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {k: v for k, v in SCHEMA["properties"].items() if k != "device"},
              "required": [c for c in SCHEMA["required"] if c != "device"]}  # fmt: skip
    fake = FlexibleVllm(to_the_end(2))
    with backend(write_run(tmp_path / "r", groups=[0], schema=schema), fake) as b:
        results = b.generate()
    assert list(results.df.columns) == ["ts", "v"]
    assert list(results.df["v"]) == list(range(MAX_RECORDS))  # the stream's marker is on its sixth row


def test_the_journal_replays_a_flexible_job_exactly(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r")
    fake = FlexibleVllm(to_the_end(2))
    first, again, resumed = journal_then_resume(lambda: backend(run, fake), tmp_path / "j", lambda: len(fake.bodies))
    assert again.equals(first)
    metrics = json.loads(resumed.artifacts["flexible_timeseries_metrics.json"])
    assert metrics["aggregate"]["reason_counts"]["terminal"] == 2


@pytest.mark.parametrize(("change", "message"), [
    ({"marker_column": "_end"}, "names _end, which dataset_schema.json does not have"),
    ({"source_timestamp_column": "when"}, "names when, which dataset_schema.json does not have"),
    ({"marker_column": "_time_idx"}, "one column as both index and marker"),
    ({"source_timestamp_format": None}, "no source_timestamp_format"),
    ({"max_records": 0}, "max_records"),
])  # fmt: skip
def test_flexible_controls_that_do_not_fit_the_run_are_one_line(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(RunDirError, match=message) as caught:
        RemoteBackend(write_run(tmp_path / "r", **change), settings=RemoteSettings(base_url="http://fake:8000"))
    assert "\n" not in str(caught.value)
