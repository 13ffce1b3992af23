"""NSS 0.1.16's time-series protocol: token-id prompts, a partial first record per group, the model's
own text as history, typed groups, and that release's group and job ends (reference nss-0.1.16 §3.9)."""

from __future__ import annotations

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
from fakes.vllm_core import VllmCore, byte_ids, byte_text

from remote_synth import GenerationStatus, RemoteBackend, RemoteSettings, RunDirError
from remote_synth.demo.layout import write_run_dir
from remote_synth.nss.timeseries import format_bound, partial_record_prefix

FMT = "%Y-%m-%d %H:%M"
START = datetime(2026, 1, 1)
BOS, EOS = 1, 2
SCHEMA = {
    "type": "object",
    "properties": {
        "device": {"type": "string"},
        "t": {"type": "string"},
        "v": {"type": "integer", "minimum": 0, "maximum": 100},
    },
    "required": ["device", "t", "v"],
}


def stamp(hour: int) -> str:
    return (START + timedelta(hours=hour)).strftime(FMT)


def write_run(path: Path, schema: dict = SCHEMA, groups: list | None = None, **series: Any) -> Path:
    settings = {"timestamp_column": "t", "timestamp_format": FMT, "timestamp_interval_seconds": 3600,
                "start_timestamp": "2026-01-01 00:00:00", "stop_timestamp": "2026-01-01 07:00:00",
                **series}  # fmt: skip  # bounds as NSS 0.1.16 stores them: str(pandas.Timestamp)
    return write_run_dir(path, schema, base_model="base", base_max_seq_length=1024, layout="0.1.16",
                         data={"group_training_examples_by": "device", "order_training_examples_by": "t"},
                         generation={"num_records": 16, "temperature": 0.7}, time_series=settings,
                         timeseries_group_values=groups if groups is not None else ["a", "b"],
                         source_columns=["v", "device", "t"], bos=("<s>", BOS), eos=("</s>", EOS))  # fmt: skip


Writer = Callable[[str, int, str], str]
"""(device, hour of the record to write first, how the record's text starts) -> completion text."""


def well_behaved(count: int = 3, spacing: str = ", ") -> Writer:
    """The next ``count`` records, written with ``spacing`` (not the compact form: history keeps it);
    a first record that completes a partial one writes only its remaining fields."""

    def write(device: str, hour: int, started: str) -> str:
        lines = [json.dumps({"device": device, "t": stamp(hour + i), "v": hour + i}, separators=(spacing, ":"))
                 for i in range(count)]  # fmt: skip
        if started:
            lines[0] = json.dumps({"v": hour}, separators=(spacing, ":"))[2:]  # 'v":0}' after '{..,"'
        return "\n".join(lines) + "\n"

    return write


class TokenSeriesVllm(PromptVllm):
    """vLLM taking token-id prompts: decodes each, and continues its context after the last BOS."""

    def __init__(self, writer: Writer) -> None:
        super().__init__(VllmCore(prompt_tokens=40, byte_tokens=True))
        self.writer = writer
        self.tokenized: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize" and json.loads(request.content).get("add_special_tokens") is False:
            self.tokenized.append(json.loads(request.content)["prompt"])
        return super().__call__(request)

    def complete(self, ids: list[int], index: int) -> str:
        context = after_last_bos(ids, BOS)
        if context.endswith(',"'):  # the partial first record
            device, time = re.match(r'\{"device":"(\w+)","t":"([^"]+)","$', context).groups()  # type: ignore[union-attr]
            return self.writer(device, hours(time), context)
        last = last_record(context)
        return self.writer(last["device"], hours(last["t"]) + 1, "")


def hours(text: str) -> int:
    return int((datetime.strptime(text, FMT) - START).total_seconds() // 3600)


def backend(run: Path, fake: TokenSeriesVllm, **config: object) -> RemoteBackend:
    settings = RemoteSettings(base_url="http://fake:8000", adapter_name="nss-adapter")
    return RemoteBackend(run, config or None, settings=settings, transport=httpx.MockTransport(fake))


def test_groups_start_at_a_partial_first_record_and_generate_from_start_to_stop(tmp_path: Path) -> None:
    fake = TokenSeriesVllm(well_behaved(3))
    with backend(write_run(tmp_path / "r"), fake) as b:
        results = b.generate()
    assert results.status is GenerationStatus.COMPLETE
    assert list(results.df.columns) == ["v", "device", "t"]  # the source table's order
    for device in ("a", "b"):
        rows = results.df[results.df["device"] == device]
        assert list(rows["t"]) == [stamp(h) for h in range(8)]  # from the start on: no training record
    first = fake.bodies[0]["prompt"][0]
    prompt = b.prompt
    prefix = '{"device":"a","t":"2026-01-01 00:00","'  # the start in the table's format (NSS wrote str(Timestamp))
    assert first == [BOS, *byte_ids(prompt), EOS, BOS, *byte_ids(prefix)]
    assert fake.tokenized.count(prompt) == 1  # each text is tokenized once


def test_history_is_the_models_own_text_each_record_tokenized_alone(tmp_path: Path) -> None:
    fake = TokenSeriesVllm(well_behaved(2, spacing=", "))
    with backend(write_run(tmp_path / "r", groups=["a"]), fake) as b:
        b.generate()
    second = fake.bodies[1]["prompt"][0]
    written = ['{"device":"a","t":"2026-01-01 00:00","v":0}\n',  # the prefix, then the model's text
               json.dumps({"device": "a", "t": stamp(1), "v": 1}, separators=(", ", ":")) + "\n"]  # fmt: skip
    assert byte_text(second[second.index(BOS, 2) :]) == "".join(written)  # as written, not made compact
    assert written[0] in fake.tokenized and written[1] in fake.tokenized  # one segment per record
    third = byte_text(fake.bodies[2]["prompt"][0])  # the last 3 records: one of the first batch, two of the next
    later = [json.dumps({"device": "a", "t": stamp(h), "v": h}, separators=(", ", ":")) + "\n" for h in (2, 3)]
    assert third.endswith(written[1] + "".join(later))


def test_max_tokens_is_what_the_context_leaves_after_each_prompt(tmp_path: Path) -> None:
    fake = TokenSeriesVllm(well_behaved(3))
    with backend(write_run(tmp_path / "r", groups=["a"]), fake) as b:
        b.generate()
    for body in fake.bodies:
        assert body["max_tokens"] == min(1024 - 40, 1024 - len(body["prompt"][0]))
        assert len(body["prompt"]) == 10 and body["n"] == 1  # one group active: 10 samples


def test_typed_groups_a_record_of_another_type_is_another_group(tmp_path: Path) -> None:
    """NSS 0.1.16 compares group values typed: "7" is not the group 7 (48a8f5c compared text)."""
    schema = {**SCHEMA, "properties": {**SCHEMA["properties"], "device": {"type": ["integer", "string"]}}}

    def writer(device: str, hour: int, started: str) -> str:
        lines = [json.dumps({"device": int(device), "t": stamp(hour + i), "v": 1}, separators=(",", ":"))
                 for i in range(3)]  # fmt: skip
        lines[2] = lines[2].replace(f'"device":{device}', f'"device":"{device}"')  # the string "7" is not 7
        if started:
            lines[0] = 'v":1}'
        return "\n".join(lines) + "\n"

    class IntFake(TokenSeriesVllm):
        def complete(self, ids: list[int], index: int) -> str:
            context = after_last_bos(ids, BOS)
            if context.endswith(',"'):
                device, time = re.match(r'\{"device":(\d+),"t":"([^"]+)","$', context).groups()  # type: ignore[union-attr]
                return self.writer(device, hours(time), context)
            last = last_record(context)
            return self.writer(str(last["device"]), hours(last["t"]) + 1, "")

    fake = IntFake(writer)
    with backend(write_run(tmp_path / "r", schema, groups=[7]), fake) as b:
        results = b.generate()
    prefix = byte_ids('{"device":7,"t":"2026-01-01 00:00","')
    assert fake.bodies[0]["prompt"][0][-len(prefix) :] == prefix
    assert list(results.df["device"]) == [7] * 8  # hours 0-7, two of each three written
    assert results.num_invalid_records == 4  # the third record of each batch: another group


def test_a_failed_group_is_counted_invalid_and_the_job_is_incomplete_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = well_behaved(2)

    def writer(device: str, hour: int, started: str) -> str:
        return good(device, hour + (1 if device == "b" and hour >= 2 else 0), started)  # b skips an hour

    with backend(write_run(tmp_path / "r"), TokenSeriesVllm(writer)) as b:
        results = b.generate()  # no GenerationError
    assert results.status is GenerationStatus.INCOMPLETE
    assert set(results.df["device"]) == {"a"}
    assert 'group "b" failed after 3 batches in a row above the invalid threshold' in caplog.text
    b_records = 2 + 3 * 2  # its first good batch, then three bad ones of two records each
    assert results.num_invalid_records == b_records  # counted, as NSS 0.1.16 counts them


def test_no_valid_record_at_all_is_incomplete_not_an_error(tmp_path: Path) -> None:
    with backend(write_run(tmp_path / "r"), TokenSeriesVllm(lambda d, h, s: "not json\n")) as b:
        results = b.generate()
    assert results.status is GenerationStatus.INCOMPLETE and results.df.empty


def test_a_group_whose_time_does_not_move_fails_after_patience(tmp_path: Path) -> None:
    """Without an interval any later time is good, but the same time again is no progress."""

    def same_time(device: str, hour: int, started: str) -> str:
        return 'v":1}\n' if started else json.dumps({"device": device, "t": stamp(0), "v": 1}) + "\n"

    run = write_run(tmp_path / "r", groups=["a"], timestamp_interval_seconds=None)
    fake = TokenSeriesVllm(same_time)
    with backend(run, fake) as b:
        results = b.generate()
    assert results.status is GenerationStatus.INCOMPLETE
    assert len(fake.bodies) == 4  # the first batch moves time (from none), three more do not: patience 3


def test_the_journal_replays_a_token_prompt_job_exactly(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r", groups=["a", 3])
    fake = TokenSeriesVllm(well_behaved(2))
    first, again, _ = journal_then_resume(lambda: backend(run, fake), tmp_path / "j", lambda: len(fake.bodies))
    assert again.equals(first)


@pytest.mark.parametrize(("value", "fmt", "written"), [
    ("2024-01-01 00:00:00", "%m/%d/%Y", "01/01/2024"),  # NSS 0.1.16 wrote str(Timestamp): T11
    ("01/01/2024", "%m/%d/%Y", "01/01/2024"),  # already in the table's format: as written
    ("2024-03-05 06:07:08", "%Y-%m-%dT%H:%M:%S", "2024-03-05T06:07:08"),
    ("1900-01-01 19:00:00", "%H:%M", "19:00"),  # a time of day
    ("0", "elapsed_seconds", 0),
    (12, "elapsed_seconds", 12),
])  # fmt: skip
def test_the_start_is_written_in_the_tables_format(value: object, fmt: str, written: object) -> None:
    assert format_bound(value, fmt) == written  # type: ignore[arg-type]


def test_a_partial_record_is_written_as_training_wrote_records() -> None:
    schema = {"properties": {"g": {"type": "integer"}, "ts": {"type": "string"}, "x": {"type": "number"}}}
    assert partial_record_prefix(["g", "ts", "x"], schema, {"g": "12", "ts": "01/02/2024"}) == (
        '{"g":12,"ts":"01\\/02\\/2024","'  # typed, and pandas escapes '/'
    )
    assert partial_record_prefix(["ts", "x"], schema, {"ts": "é"}) == '{"ts":"é","'
    with pytest.raises(ValueError, match="do not begin with"):
        partial_record_prefix(["ts", "g", "x"], schema, {"g": 1, "ts": "a"})


@pytest.mark.parametrize(("metadata", "message"), [
    ({"timeseries_group_values": []}, "timeseries_group_values is empty"),
    ({"timeseries_metadata": {"source_columns": ["device", "t", "v"], "flexible": {"max_records": 9}}},
     "which dataset_schema.json does not have"),
    ({"prompt_config": "bos"}, "bos_token_id"),
])  # fmt: skip
def test_run_directories_this_version_cannot_generate_are_one_line(
    tmp_path: Path, metadata: dict, message: str
) -> None:
    run = write_run(tmp_path / "r")
    path = run / "train" / "adapter" / "metadata_v2.json"
    data = json.loads(path.read_text())
    if metadata.get("prompt_config") == "bos":
        data["prompt_config"]["bos_token_id"] = None
    else:
        data.update(metadata)
    path.write_text(json.dumps(data))
    with pytest.raises(RunDirError, match=message) as caught:
        RemoteBackend(run, settings=RemoteSettings(base_url="http://fake:8000"))
    assert "\n" not in str(caught.value)


def test_a_schema_that_does_not_open_with_group_and_time_is_refused(tmp_path: Path) -> None:
    schema = {**SCHEMA, "properties": {k: SCHEMA["properties"][k] for k in ("t", "device", "v")}}
    with pytest.raises(RunDirError, match="group 1 of timeseries_group_values cannot start a record"):
        RemoteBackend(write_run(tmp_path / "r", schema), settings=RemoteSettings(base_url="http://fake:8000"))
