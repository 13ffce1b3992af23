"""Reading NSS run directories: layouts, parents, and one clear error per broken file."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from remote_synth import RunDirectory, RunDirError
from remote_synth.demo.layout import write_run_dir

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x"]}}, "required": ["a"]}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return write_run_dir(tmp_path / "cfg---data" / "2026-01-01T00-00-00", SCHEMA, base_model="TinyLlama/x", lora_r=32)


def test_reads_everything(run: Path) -> None:
    rd = RunDirectory.open(run).check()
    assert rd.columns == ["a", "b"]
    assert rd.metadata.prompt_config.template.startswith("[INST]")
    assert rd.metadata.max_seq_length == 2048
    assert rd.adapter_config.r == 32
    assert rd.config.training.lora_r == 32
    assert rd.output_file == run.resolve() / "generate" / "synthetic_data.csv"


def test_rope_factor_scales_and_is_clamped(run: Path) -> None:
    meta_file = run / "train" / "adapter" / "metadata_v2.json"
    meta = json.loads(meta_file.read_text())
    meta["base_max_seq_length"] = 12288
    meta["rope_scaling"] = {"rope_type": "linear", "factor": 2.0, "theta": None}
    meta_file.write_text(json.dumps(meta))
    assert RunDirectory.open(run).metadata.max_seq_length == 24576
    meta["rope_scaling"]["factor"] = 10
    meta_file.write_text(json.dumps(meta))
    assert RunDirectory.open(run).metadata.max_seq_length == 12288 * 6


def test_project_dir_resolves_to_newest_run(run: Path) -> None:
    newer = write_run_dir(run.parent / "2026-02-01T00-00-00", SCHEMA, base_model="m")
    assert RunDirectory.open(run.parent).path == newer.resolve()


def test_generation_only_run_reads_its_parent(run: Path, tmp_path: Path) -> None:
    child = tmp_path / "child"
    (child / "generate").mkdir(parents=True)
    info = {"Adapter Source": {"Run directory": str(run), "Adapter path": str(run / "train" / "adapter")}}
    (child / "generate" / "info.json").write_text(json.dumps(info))
    rd = RunDirectory.open(child)
    assert rd.source == run.resolve() and rd.path == child.resolve()
    assert rd.output_file == child.resolve() / "generate" / "synthetic_data.csv"
    assert rd.columns == ["a", "b"]


def test_root_level_config_wins(run: Path) -> None:
    (run / "safe-synthesizer-config.json").write_text(json.dumps({"generation": {"temperature": 0.3}}))
    assert RunDirectory.open(run).config.generation == {"temperature": 0.3}


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="does not exist"):
        RunDirectory.open(tmp_path / "nope")
    with pytest.raises(RunDirError, match="not an NSS run directory"):
        RunDirectory.open(tmp_path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("dataset_schema.json", "{not json", "corrupt JSON"),
        ("dataset_schema.json", '{"type": "object"}', "non-empty 'properties'"),
        ("dataset_schema.json", '{"properties": {"a": {"type": 5}}}', "invalid JSON schema"),
        ("metadata_v2.json", '{"model_name_or_path": "m"}', "prompt_config"),
        ("metadata_v2.json", "[]", "expected a JSON object"),
        ("adapter_config.json", '{"r": 0}', "r:"),
        ("adapter_config.json", '{"r": "big"}', "r:"),
    ],
)
def test_corrupt_files_name_the_file_and_problem(run: Path, name: str, content: str, message: str) -> None:
    (run / "train" / "adapter" / name).write_text(content)
    with pytest.raises(RunDirError, match=message) as info:
        RunDirectory.open(run).check()
    assert name in str(info.value)


def test_missing_file_and_weights(run: Path) -> None:
    (run / "train" / "adapter" / "metadata_v2.json").unlink()
    with pytest.raises(RunDirError, match="metadata_v2.json: missing"):
        RunDirectory.open(run).check()


def test_missing_weights(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "r", SCHEMA, base_model="m", adapter_weights=None)
    with pytest.raises(RunDirError, match="adapter weights"):
        RunDirectory.open(run).check()


def test_time_series_runs_need_their_time_settings_and_initial_prefill(tmp_path: Path) -> None:
    series = {"timestamp_column": "t", "timestamp_format": "%H:%M", "timestamp_interval_seconds": 600}
    whole = write_run_dir(tmp_path / "ok", SCHEMA, base_model="m", time_series=series,
                          initial_prefill={"a": '{"t":"00:00"}\n'})  # fmt: skip
    assert RunDirectory.open(whole).check().is_timeseries
    no_format = write_run_dir(tmp_path / "f", SCHEMA, base_model="m", time_series={"timestamp_column": "t"},
                              initial_prefill={"a": "x"})  # fmt: skip
    with pytest.raises(RunDirError, match="safe-synthesizer-config.json: .*timestamp_column and _format"):
        RunDirectory.open(no_format).check()
    no_prefill = write_run_dir(tmp_path / "p", SCHEMA, base_model="m", time_series=series)
    with pytest.raises(RunDirError, match="metadata_v2.json: .*initial_prefill"):
        RunDirectory.open(no_prefill).check()


def test_nss_0_1_16_time_series_runs_load_and_what_they_lack_is_one_line(tmp_path: Path) -> None:
    flexible = {"timestamp_column": "_time_idx", "timestamp_format": "elapsed_seconds",
                "timestamp_interval_seconds": 1, "start_timestamp": 0, "stop_timestamp": 47}  # fmt: skip
    grouped = {"group_training_examples_by": "g"}
    run = write_run_dir(tmp_path / "new", SCHEMA, base_model="m", time_series=flexible, layout="0.1.16", data=grouped,
                        timeseries_group_values=["a", 2])  # fmt: skip
    assert RunDirectory.open(run).check().speaks_series_016
    meta_file = run / "train" / "adapter" / "metadata_v2.json"
    meta = json.loads(meta_file.read_text())
    meta["timeseries_metadata"]["flexible"] = {"max_records": 48}
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(
        RunDirError,
        match="metadata_v2.json: timeseries_metadata.flexible names _time_idx, _is_last_row, which dataset_schema.json",
    ):
        RunDirectory.open(run).check()
    ungrouped = write_run_dir(tmp_path / "u", SCHEMA, base_model="m", time_series=flexible, layout="0.1.16",
                              timeseries_group_values=["a"])  # fmt: skip
    with pytest.raises(RunDirError, match="config.json: .* needs .*group_training_examples_by"):
        RunDirectory.open(ungrouped).check()


def test_unknown_keys_from_other_nss_versions_are_ignored(run: Path) -> None:
    meta_file = run / "train" / "adapter" / "metadata_v2.json"
    meta = json.loads(meta_file.read_text()) | {"future_field": 1}
    meta_file.write_text(json.dumps(meta))
    assert RunDirectory.open(run).metadata.model_name_or_path == "TinyLlama/x"


def test_metadata_from_other_families_and_versions(run: Path) -> None:
    meta_file = run / "train" / "adapter" / "metadata_v2.json"
    meta = json.loads(meta_file.read_text())
    meta["prompt_config"].update(
        template="user\n {instruction} {schema} <|im_end|> \n assistant\n{prefill}",
        bos_token="<|im_start|>", bos_token_id=None, eos_token="<|im_end|>",
    )  # fmt: skip
    meta.update(
        base_max_seq_length=None,
        rope_scaling={"rope_type": "yarn", "factor": None, "theta": 1e6, "original_max_position_embeddings": 4096},
        max_sequences_per_example="auto",
        initial_prefill={"0": " {}\n"},
    )
    meta_file.write_text(json.dumps(meta))
    metadata = RunDirectory.open(run).metadata
    assert metadata.max_seq_length == 2048
    assert metadata.prompt_config.bos_token == "<|im_start|>"


def _schema_file(run: Path) -> Path:
    return run / "train" / "adapter" / "dataset_schema.json"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: (p.unlink(), os.mkfifo(p)), "not a regular file"),  # a FIFO would hang a read
        (lambda p: (p.unlink(), p.symlink_to("/dev/zero")), "not a regular file"),  # would grow forever
        (lambda p: (p.unlink(), p.mkdir()), "not a regular file"),
        (lambda p: p.write_bytes(b'{"properties": {"\\xff": 1}}'.replace(b"\\xff", b"\xff")), "not UTF-8"),
        (
            lambda p: p.write_text(json.dumps({"properties": {f"c{i}": {"type": "integer"} for i in range(10_001)}})),
            "10,001 columns",
        ),  # fmt: skip
    ],
)
def test_run_directory_files_that_are_not_files_are_one_error(run: Path, make: object, message: str) -> None:
    make(_schema_file(run))  # type: ignore[operator]
    with pytest.raises(RunDirError, match=message):
        RunDirectory.open(run).check()


def test_a_template_with_an_unknown_placeholder_is_named(run: Path) -> None:
    meta_file = run / "train" / "adapter" / "metadata_v2.json"
    meta = json.loads(meta_file.read_text())
    meta["prompt_config"]["template"] = "[INST] {instruction} {schema} {tablename} [/INST]"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(
        RunDirError, match=r"metadata_v2.json: prompt_config.template: .*unknown placeholder \{tablename\}"
    ):
        RunDirectory.open(run).check()


def test_a_file_or_a_subfolder_given_as_the_run_says_what_to_pass(run: Path) -> None:
    with pytest.raises(RunDirError, match="is a file: pass the NSS run directory"):
        RunDirectory.open(run / "train" / "safe-synthesizer-config.json")
    with pytest.raises(RunDirError, match=f"is inside a run directory: pass {re.escape(str(run.resolve()))} instead"):
        RunDirectory.open(run / "train" / "adapter")
