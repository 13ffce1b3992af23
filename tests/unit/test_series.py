"""Time-series runs on the engine: windows and prefills, steps, group ends, n by active groups, results."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest
from checks import journal_then_resume
from fakes.prompt_vllm import PromptVllm, last_record
from fakes.vllm_core import VllmCore

from remote_synth import GenerationStatus, RemoteBackend, RemoteSettings
from remote_synth.demo.layout import write_run_dir
from remote_synth.nss.processors import TimeSeriesDataProcessor

SCHEMA = {
    "type": "object",
    "properties": {
        "v": {"type": "integer", "minimum": 0, "maximum": 100},
        "t": {"type": "string"},
        "device": {"enum": ["a", "b", "c"]},
    },
    "required": ["v", "t", "device"],
}
FMT = "%Y-%m-%d %H:%M"
START = datetime(2026, 1, 1)


def stamp(hour: int) -> str:
    return (START + timedelta(hours=hour)).strftime(FMT)


def record(device: str, hour: int, v: int = 1) -> dict:
    return {"device": device, "t": stamp(hour), "v": v}


def nss_initial_prefill(device: str) -> str:
    """As NSS's assembler writes it: a leading space, records separated by blank lines."""
    return " " + "\n".join(json.dumps(record(device, h), separators=(",", ":")) + "\n" for h in range(3))


@pytest.fixture
def run(tmp_path: Path) -> Path:
    series = {
        "timestamp_column": "t",
        "timestamp_format": FMT,
        "timestamp_interval_seconds": 3600,
        "start_timestamp": "2026-01-01 00:00:00",
        "stop_timestamp": "2026-01-01 11:00:00",
    }  # pandas' str()
    return write_run_dir(tmp_path / "ts", SCHEMA, base_model="base", base_max_seq_length=1024,
                         data={"group_training_examples_by": "device", "order_training_examples_by": "t"},
                         generation={"num_records": 20, "temperature": 0.7}, time_series=series,
                         initial_prefill={d: nss_initial_prefill(d) for d in ("a", "b", "c")})  # fmt: skip


Continuation = Callable[[str, int], str]


def next_records(count: int = 4) -> Continuation:
    """A well-behaved model: the next ``count`` hours of the prompt's last record's device."""

    def write(device: str, last_hour: int) -> str:
        return "".join(json.dumps(record(device, last_hour + i)) + "\n" for i in range(1, count + 1))

    return write


class SeriesVllm(PromptVllm):
    """vLLM's routes; each completion continues the last record of its prompt with ``model``."""

    def __init__(self, model: Continuation) -> None:
        super().__init__(VllmCore(prompt_tokens=40))
        self.model = model

    def complete(self, prompt: str, index: int) -> str:
        last = last_record(prompt.split("[/INST]")[-1])
        hour = int((datetime.strptime(last["t"], FMT) - START).total_seconds() // 3600)
        return self.model(last["device"], hour)


def backend(run: Path, fake: SeriesVllm, **config: object) -> RemoteBackend:
    settings = RemoteSettings(base_url="http://fake:8000", adapter_name="nss-adapter")
    return RemoteBackend(run, config or None, settings=settings, transport=httpx.MockTransport(fake))


def test_each_group_continues_its_own_window_to_the_stop_timestamp(run: Path) -> None:
    fake = SeriesVllm(next_records(4))
    with backend(run, fake) as b:
        results = b.generate()
    df = results.df
    assert results.status is GenerationStatus.COMPLETE
    assert list(df.columns) == ["v", "t", "device"]
    # hours 3..11 for each device: the stop (given as pandas' str(), NSS bug 8) ends each group,
    # and what a completion wrote past it is dropped (NSS kept it: bug 9)
    for device in ("a", "b", "c"):
        rows = df[df["device"] == device]
        assert list(rows["t"]) == [stamp(h) for h in range(3, 12)]
    assert list(df["device"]) == sorted(df["device"])  # by group, then time
    first = fake.bodies[0]["prompt"][0]
    expected_prefill = "".join(json.dumps(record("a", h), separators=(",", ":")) + "\n" for h in range(3))
    assert first.endswith("[/INST]" + expected_prefill)  # compact, as trained (NSS bug 5)
    assert '"device":<unk>,"t":<unk>,"v":<unk>' in first  # group, time, rest: training's order (bug 5)


def test_n_samples_per_prompt_by_active_groups_and_max_tokens_leave_room_for_the_prefill(run: Path) -> None:
    fake = SeriesVllm(next_records(4))
    with backend(run, fake) as b:
        b.generate()
    body = fake.bodies[0]
    assert len(body["prompt"]) == 10 and len(set(body["prompt"])) == 1  # 3 active groups: n = 10
    prefill = body["prompt"][0].split("[/INST]")[1]
    # NSS 0.1.16: max_seq_length less the prompt (40 tokens); then less the prefill's bytes
    assert body["max_tokens"] == 1024 - 40 - len(prefill.encode())
    assert "structured_outputs" not in body and body["skip_special_tokens"] is True
    assert body["temperature"] == 0.7 and body["top_k"] == -1 and body["min_p"] == 0.0


def test_a_group_that_keeps_breaking_time_fails_alone_and_its_records_are_dropped(
    run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = next_records(3)

    def model(device: str, hour: int) -> str:
        if device == "b" and hour >= 4:  # from its second window on, b skips an hour
            return good(device, hour + 1)
        return good(device, hour)

    with backend(run, SeriesVllm(model)) as b:
        results = b.generate()
    assert set(results.df["device"]) == {"a", "c"}  # b's first good batch is dropped too (NSS bug 9)
    assert len(results.df) == 18
    assert "group b failed after 3 batches" in caplog.text
    assert results.num_invalid_records == 0  # a failed group's batches are not counted either


def test_no_valid_record_at_all_is_a_generation_error(run: Path) -> None:
    from remote_synth import GenerationError

    with backend(run, SeriesVllm(lambda device, hour: "not json\n")) as b, pytest.raises(GenerationError):
        b.generate()


def test_the_journal_replays_a_time_series_job_exactly(run: Path, tmp_path: Path) -> None:
    fake = SeriesVllm(next_records(2))
    first, again, _ = journal_then_resume(lambda: backend(run, fake), tmp_path / "j", lambda: len(fake.bodies))
    assert again.equals(first)


@pytest.mark.parametrize(("text", "valid", "errors"), [
    ('{"device":"a","t":"2026-01-01 03:00","v":1}\n{"device":"a","t":"2026-01-01 04:00","v":2}\n', 2, []),
    ('{"device":"a","t":"2026-01-01 03:00","v":1}\n{"device":"a","t":"2026-01-01 05:00","v":2}\n'
     '{"device":"a","t":"2026-01-01 06:00","v":3}\n', 1,
     ["'t' must advance in 3600 seconds increments with no gaps", "Invalid due to previous record error"]),
    ('{"device":"a","t":"2026-01-01 03:00","v":1}\n{"device":"a","t":"2026-01-01 02:00","v":2}\n', 1,
     ["'t' must be strictly increasing"]),
    ('{"device":"a","v":1}\n{"device":"a","t":"2026-01-01 04:00","v":2}\n', 0, ["'t' is a required property"]),
    ('{"device":"a","t":"noon","v":1}\n', 0, ["Invalid 't' value"]),
    ('{"device":"a","t":"2026-01-01 03:00","v":1}\n{"device":"a",}\n{"device":"a","t":"2026-01-01 04:00","v":2}\n', 1,
     ["Invalid JSON: Expecting property name enclosed in double quotes"]),  # the rest is not counted (NSS)
])  # fmt: skip
def test_time_series_processor_as_nss(text: str, valid: int, errors: list[str]) -> None:
    processor = TimeSeriesDataProcessor(SCHEMA, "t", FMT, 3600, detailed_errors=False)
    parsed = processor(0, text)
    assert len(parsed.valid_records) == valid
    assert [message for message, _ in parsed.errors] == errors
    assert len(parsed.invalid_records) == len(errors)
    assert all(re.match(r"^\{", raw) for raw in parsed.invalid_records)


def test_a_table_without_groups_and_times_of_day_ends_at_num_records(tmp_path: Path) -> None:
    """NSS's pseudo group (not in the records) and a format without a date, whose stop cannot end a
    group (bug 8): the single group completes at num_records, across midnight."""
    schema = {"type": "object", "properties": {"t": {"type": "string"}, "v": {"type": "integer"}},
              "required": ["t", "v"]}  # fmt: skip
    series = {"timestamp_column": "t", "timestamp_format": "%H:%M", "timestamp_interval_seconds": 3600,
              "start_timestamp": "1900-01-01 00:00:00", "stop_timestamp": "1900-01-01 23:00:00"}  # fmt: skip
    first = "".join(json.dumps({"t": f"{h:02d}:00", "v": h}) + "\n" for h in (19, 20, 21))
    run = write_run_dir(tmp_path / "p", schema, base_model="base", base_max_seq_length=1024,
                        data={"group_training_examples_by": "__nss_sequence_id"}, time_series=series,
                        generation={"num_records": 8}, initial_prefill={"0": first})  # fmt: skip

    class Clock(SeriesVllm):
        def complete(self, prompt: str, index: int) -> str:
            last = last_record(prompt.split("[/INST]")[-1])
            hour = int(last["t"][:2])
            return "".join(json.dumps({"t": f"{(hour + i) % 24:02d}:00", "v": 1}) + "\n" for i in (1, 2))

    with backend(run, Clock(next_records())) as b:
        results = b.generate()
    assert results.status is GenerationStatus.COMPLETE and list(results.df.columns) == ["t", "v"]
    assert list(results.df["t"]) == ["22:00", "23:00", "00:00", "01:00", "02:00", "03:00", "04:00", "05:00"]


def test_output_is_sorted_by_time_as_time_not_as_text(tmp_path: Path) -> None:
    from remote_synth import RunDirectory
    from remote_synth._engine.series import SeriesKind

    series = {"timestamp_column": "t", "timestamp_format": "%m/%d/%Y", "timestamp_interval_seconds": 86400}
    path = write_run_dir(tmp_path / "s", SCHEMA, base_model="base", time_series=series,
                         data={"group_training_examples_by": "device"}, initial_prefill={"a": "x"})  # fmt: skip
    run = RunDirectory.open(path)
    df = pd.DataFrame({"v": [1, 2, 3], "t": ["01/02/2027", "12/31/2026", "01/01/2027"], "device": ["b", "a", "a"]})
    ordered = SeriesKind.open(run, run.metadata).sort(df)
    assert list(ordered["t"]) == ["12/31/2026", "01/01/2027", "01/02/2027"]  # a's two, then b's


def test_a_group_already_at_its_stop_completes_and_is_not_failed_for_what_is_dropped(
    run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Records past the stop are dropped, but the batch is judged as written: good records, not none."""
    meta_file = run / "train" / "adapter" / "metadata_v2.json"
    meta = json.loads(meta_file.read_text())
    meta["initial_prefill"]["b"] = "".join(json.dumps(record("b", h)) + "\n" for h in (9, 10, 11))
    meta_file.write_text(json.dumps(meta))
    with backend(run, SeriesVllm(next_records(4))) as b:
        results = b.generate()
    assert "failed" not in caplog.text and results.status is GenerationStatus.COMPLETE
    assert set(results.df["device"]) == {"a", "c"} and len(results.df) == 18


def test_a_group_whose_bad_last_batch_reaches_the_stop_is_complete(run: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = next_records(1)

    def model(device: str, hour: int) -> str:
        if device == "a" and hour == 10:  # the stop's record, then junk: 4 of 5 invalid
            return good(device, hour) + '{"device":"a",}\n' * 4
        return good(device, hour)

    with backend(run, SeriesVllm(model)) as b:
        results = b.generate()
    assert "failed" not in caplog.text and results.status is GenerationStatus.COMPLETE
    assert list(results.df[results.df["device"] == "a"]["t"]) == [stamp(h) for h in range(3, 12)]


def test_structured_generation_is_not_sent_for_time_series_and_says_so(
    run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = SeriesVllm(next_records(4))
    with backend(run, fake, use_structured_generation=True) as b:
        b.generate()
    assert all("structured_outputs" not in body for body in fake.bodies)
    assert "structured_generation.enabled is ignored" in caplog.text


def test_the_run_kind_is_decided_once_from_the_run_directory(run: Path, tmp_path: Path) -> None:
    from remote_synth._engine import run_kind
    from remote_synth._engine.series import SeriesKind
    from remote_synth._engine.tabular import TabularKind
    from remote_synth.nss import GenerateParameters, RunDirectory

    series_run = RunDirectory.open(run)
    config = GenerateParameters.resolve(series_run.config.generation, {"use_structured_generation": True})
    kind = run_kind(series_run, series_run.metadata, config)
    assert isinstance(kind, SeriesKind)
    assert kind.structured_outputs is None and not kind.accepts_structured_generation  # as NSS: ignored
    assert kind.journal_keys == 1 and kind.prompt == kind.prompt_for("")

    table = RunDirectory.open(write_run_dir(tmp_path / "tab", SCHEMA, base_model="base", base_max_seq_length=1024))
    tabular = run_kind(table, table.metadata, config)
    assert isinstance(tabular, TabularKind)
    assert tabular.structured_outputs is not None and tabular.accepts_structured_generation
    assert tabular.journal_keys == 0
