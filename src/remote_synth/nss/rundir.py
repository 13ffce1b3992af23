"""Reading an NSS run directory as NSS writes it, without transformers or torch.

Layout (NSS ``cli/artifact_structure.py``)::

    <run>/safe-synthesizer-config.json          (newer NSS) or
    <run>/train/safe-synthesizer-config.json    (older NSS)
    <run>/train/adapter/{adapter_config.json, adapter_model.safetensors,
                         metadata_v2.json, dataset_schema.json}
    <run>/generate/synthetic_data.csv           (NSS's default output)

A generation-only run keeps no ``train/``; its ``generate/info.json`` names the
training run ("Adapter Source" / "Run directory"), whose artifacts are read.
A project directory (``<config>---<dataset>``) resolves to its newest run.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .._exceptions import RunDirError

__all__ = ["AdapterConfig", "ModelMetadata", "NSSConfig", "PromptConfig", "RunDirectory"]

MAX_ROPE_SCALING_FACTOR = 6.0
DEFAULT_BASE_SEQ_LENGTH = 2048
CONFIG_NAME = "safe-synthesizer-config.json"


class _Lenient(BaseModel):
    """Files written by other NSS versions may carry more keys: keep what we know."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class PromptConfig(_Lenient):
    """NSS ``LLMPromptConfig``: the prompt template and special tokens."""

    template: str
    add_bos_token_to_prompt: bool = True
    add_eos_token_to_prompt: bool = True
    bos_token: str = ""
    bos_token_id: int | None = None
    eos_token: str = ""
    eos_token_id: int | None = None

    @field_validator("template")
    @classmethod
    def _known_placeholders(cls, template: str) -> str:
        """NSS's templates fill ``{instruction}``, ``{schema}`` and ``{prefill}``, nothing else."""
        try:
            template.format(instruction="", schema="", prefill="")
        except KeyError as exc:
            raise ValueError(f"unknown placeholder {{{exc.args[0]}}}; NSS fills {{instruction}}, {{schema}} "
                             "and {prefill}") from None  # fmt: skip
        except (IndexError, ValueError) as exc:
            raise ValueError(f"not a format template ({exc}); write literal braces as {{{{ and }}}}") from None
        return template


class RopeScaling(_Lenient):
    rope_type: str | None = None
    factor: float | None = None
    theta: float | None = None
    rope_parameters: dict[str, Any] | None = None
    """NSS 0.1.16: the model's native Transformers v5 rope parameters."""


class FlexibleSeries(_Lenient):
    """NSS 0.1.16 ``FlexibleTimeseriesMetadata``: groups of differing shapes, ended by a marker."""

    index_column: str = Field("_time_idx", min_length=1)
    marker_column: str = Field("_is_last_row", min_length=1)
    max_records: int = Field(ge=1)
    source_timestamp_column: str | None = None
    source_timestamp_format: str | None = None
    source_interval_seconds: float | None = Field(None, gt=0)


class TimeseriesMetadata(_Lenient):
    """NSS 0.1.16 ``TimeseriesMetadata``: the source's column order, and the flexible mode's controls."""

    source_columns: list[str] = Field(default_factory=list)
    flexible: FlexibleSeries | None = None


class ModelMetadata(_Lenient):
    """The parts of NSS ``ModelMetadata`` (``metadata_v2.json``) generation needs."""

    model_name_or_path: str
    prompt_config: PromptConfig
    base_max_seq_length: int | None = Field(DEFAULT_BASE_SEQ_LENGTH, ge=1)
    rope_scaling: RopeScaling | None = None
    max_sequences_per_example: int | str | None = None
    is_adapter: bool | None = True
    instruction: str = "Generate a JSONL dataset with the following columns: "
    initial_prefill: Any = None
    timeseries_group_values: list[str | int | float | bool | None] | None = None
    """NSS 0.1.16's time-series protocol (in place of ``initial_prefill``): every group, typed."""
    timeseries_metadata: TimeseriesMetadata | None = None
    max_tokens_per_example: int | None = Field(None, ge=0)
    """NSS 0.1.16: the longest training example in tokens, prompt included (None: older NSS)."""
    max_records_per_group: int | None = Field(None, ge=1)
    """NSS 0.1.16: the largest group in training (grouped runs), the bound of grouped structured outputs."""

    def max_tokens_for(self, prompt_tokens: int, multiplier: float) -> int:
        """NSS 0.1.16 ``generation_max_tokens_for``: the longest training example times ``multiplier``,
        else ``max_seq_length``; at most what the context leaves after the prompt (never below 1).

        Why: a completion that never emits EOS stops near the trained length instead of running
        to the end of the context (GPU time, and records past what the model was trained on).
        """
        sized = int(self.max_tokens_per_example * multiplier) if self.max_tokens_per_example else None
        return max(1, min(sized or self.max_seq_length, self.max_seq_length - prompt_tokens))

    @property
    def max_seq_length(self) -> int:
        """NSS: base length times the rope factor (clamped to 6) when the factor is > 1."""
        base = self.base_max_seq_length or DEFAULT_BASE_SEQ_LENGTH
        factor = (self.rope_scaling.factor if self.rope_scaling else None) or 1.0
        if factor > 1:
            return int(base * min(factor, MAX_ROPE_SCALING_FACTOR))
        return base


class AdapterConfig(_Lenient):
    """The parts of peft's ``adapter_config.json`` a server launch needs."""

    r: int = Field(ge=1)
    lora_alpha: float | None = None
    base_model_name_or_path: str | None = None
    target_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None


class _DataSection(_Lenient):
    group_training_examples_by: str | list[str] | None = None
    order_training_examples_by: str | None = None
    max_sequences_per_example: int | str | None = None


class _TrainingSection(_Lenient):
    pretrained_model: str | None = None
    lora_r: int | None = None


class TimeSeriesSection(_Lenient):
    """``time_series`` of ``safe-synthesizer-config.json``, as NSS's training set it (reference §5)."""

    is_timeseries: bool | None = False
    timestamp_column: str | None = None
    timestamp_format: str | None = None
    timestamp_interval_seconds: float | None = Field(None, gt=0)
    start_timestamp: str | int | None = None
    stop_timestamp: str | int | None = None
    """NSS 0.1.16 writes ints in its flexible mode (elapsed steps)."""


class NSSConfig(_Lenient):
    """The parts of ``safe-synthesizer-config.json`` generation needs; ``generation`` is kept raw."""

    generation: dict[str, Any] = Field(default_factory=dict)
    data: _DataSection = Field(default_factory=_DataSection)
    training: _TrainingSection = Field(default_factory=_TrainingSection)
    time_series: TimeSeriesSection = Field(default_factory=TimeSeriesSection)

    @property
    def max_sequences_per_example(self) -> int | None:
        value = self.data.max_sequences_per_example
        return value if isinstance(value, int) else None


@dataclass(frozen=True)
class RunDirectory:
    """An NSS run directory; ``source`` is where the trained artifacts live.

    ```python
    run = RunDirectory.open("runs/cfg---data/2026-01-01T00:00:00")
    run.schema["properties"], run.metadata.prompt_config.template, run.adapter_config.r
    ```
    """

    path: Path
    source: Path

    @classmethod
    def open(cls, path: str | Path) -> RunDirectory:
        """Find the run (and its training source) or fail naming what is missing."""
        root = Path(path).expanduser()
        if root.exists() and not root.is_dir():
            raise RunDirError(root, "is a file: pass the NSS run directory (the folder that has train/adapter/)")
        if not root.is_dir():
            raise RunDirError(root, "run directory does not exist (pass an NSS run directory that has train/adapter/)")
        run = _newest_run(root) if not _has_adapter(root) and not _parent_from_info(root) else root
        source = run if _has_adapter(run) else _parent_from_info(run)
        if source is None or not _has_adapter(source):
            enclosing = next((p for p in root.resolve().parents if _has_adapter(p)), None)
            if enclosing is not None:
                raise RunDirError(root, f"is inside a run directory: pass {enclosing} instead")
            raise RunDirError(
                root / "train" / "adapter",
                "missing: not an NSS run directory (expected train/adapter/ with the trained adapter)",
            )
        return cls(path=run.resolve(), source=source.resolve())

    @property
    def adapter_dir(self) -> Path:
        return self.source / "train" / "adapter"

    @property
    def output_file(self) -> Path:
        """NSS's default output location, in the run (not the parent) directory."""
        return self.path / "generate" / "synthetic_data.csv"

    @property
    def config_file(self) -> Path:
        for candidate in (self.source / CONFIG_NAME, self.source / "train" / CONFIG_NAME):
            if candidate.is_file():
                return candidate
        return self.source / "train" / CONFIG_NAME

    @cached_property
    def schema(self) -> dict[str, Any]:
        path = self.adapter_dir / "dataset_schema.json"
        schema = _read_json(path)
        if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict) or not schema["properties"]:
            raise RunDirError(path, "not a record schema: expected an object with a non-empty 'properties' mapping")
        if len(schema["properties"]) > MAX_COLUMNS:
            raise RunDirError(path, f"{len(schema['properties']):,} columns, more than {MAX_COLUMNS:,} (no prompt of "
                              "such a table fits a model's context)")  # fmt: skip
        _check_schema(path, schema)
        return schema

    @cached_property
    def metadata(self) -> ModelMetadata:
        return _parse(ModelMetadata, self.adapter_dir / "metadata_v2.json")

    @cached_property
    def adapter_config(self) -> AdapterConfig:
        return _parse(AdapterConfig, self.adapter_dir / "adapter_config.json")

    @cached_property
    def config(self) -> NSSConfig:
        return _parse(NSSConfig, self.config_file)

    @property
    def columns(self) -> list[str]:
        """Schema column order, which is the prompt's and the output's column order."""
        return list(self.schema["properties"])

    def check(self) -> RunDirectory:
        """Read every artifact now, so a corrupt file fails before a server starts."""
        _ = (self.schema, self.metadata, self.adapter_config, self.config)
        weights = [p for p in self.adapter_dir.glob("adapter_model.*") if p.suffix in (".safetensors", ".bin")]
        if not weights:
            raise RunDirError(
                self.adapter_dir / "adapter_model.safetensors", "missing: the adapter weights are not there"
            )
        if self.is_timeseries:
            self._check_time_series()
        return self

    @property
    def is_timeseries(self) -> bool:
        return bool(self.config.time_series.is_timeseries)

    def _check_time_series(self) -> None:
        series = self.config.time_series
        if not series.timestamp_column or not series.timestamp_format:
            raise RunDirError(self.config_file, "a time-series run needs time_series.timestamp_column and _format")
        if self.metadata.timeseries_group_values is not None:
            self._check_group_registry()
            return
        if isinstance(series.start_timestamp, int) or isinstance(series.stop_timestamp, int):
            raise RunDirError(self.config_file, "integer start/stop timestamps belong to NSS 0.1.16's protocol, "
                              "but metadata_v2.json has no timeseries_group_values")  # fmt: skip
        prefill = self.metadata.initial_prefill
        if not isinstance(prefill, dict) or not prefill or not all(isinstance(v, str) for v in prefill.values()):
            raise RunDirError(
                self.adapter_dir / "metadata_v2.json",
                "a time-series run needs timeseries_group_values (NSS 0.1.16) or initial_prefill (earlier NSS): "
                "the groups to generate",
            )

    @property
    def speaks_series_016(self) -> bool:
        """Saved with NSS 0.1.16's time-series protocol (a group registry, token prompts)."""
        return self.is_timeseries and self.metadata.timeseries_group_values is not None

    def _check_group_registry(self) -> None:
        metadata_file = self.adapter_dir / "metadata_v2.json"
        series, metadata = self.config.time_series, self.metadata
        if not metadata.timeseries_group_values:
            raise RunDirError(metadata_file, "timeseries_group_values is empty: no group to generate")
        if series.start_timestamp is None or not self.config.data.group_training_examples_by:
            raise RunDirError(self.config_file, "an NSS 0.1.16 time-series run needs time_series.start_timestamp and "
                              "data.group_training_examples_by (set by NSS's preprocessing)")  # fmt: skip
        if metadata.timeseries_metadata is not None and metadata.timeseries_metadata.flexible is not None:
            self._check_flexible(metadata.timeseries_metadata.flexible)
        prompt = metadata.prompt_config
        if prompt.bos_token_id is None or (prompt.add_eos_token_to_prompt and prompt.eos_token_id is None):
            raise RunDirError(metadata_file, "prompt_config.bos_token_id (and eos_token_id, when added to the "
                              "prompt) is missing: NSS 0.1.16's time-series prompts are token ids")  # fmt: skip

    def _check_flexible(self, flexible: FlexibleSeries) -> None:
        """NSS 0.1.16's flexible mode: its control columns are in the schema, the index is the time."""
        metadata_file = self.adapter_dir / "metadata_v2.json"
        controls = [flexible.index_column, flexible.marker_column]
        if flexible.index_column == flexible.marker_column:
            raise RunDirError(metadata_file, "timeseries_metadata.flexible names one column as both index and marker")
        source = flexible.source_timestamp_column
        missing = [c for c in [*controls, *([source] if source else [])] if c not in self.schema["properties"]]
        if missing:
            raise RunDirError(metadata_file, f"timeseries_metadata.flexible names {', '.join(missing)}, which "
                              "dataset_schema.json does not have")  # fmt: skip
        if source is not None and not flexible.source_timestamp_format:
            raise RunDirError(metadata_file, "timeseries_metadata.flexible has a source_timestamp_column but no "
                              "source_timestamp_format")  # fmt: skip
        if self.config.time_series.timestamp_column != flexible.index_column:
            raise RunDirError(self.config_file, f"time_series.timestamp_column is "
                              f"{self.config.time_series.timestamp_column!r}, but a flexible run's time is its "
                              f"index column {flexible.index_column!r}")  # fmt: skip

    @property
    def flexible(self) -> FlexibleSeries | None:
        """NSS 0.1.16's flexible time-series controls, when the run was trained in that mode."""
        series = self.metadata.timeseries_metadata
        return series.flexible if self.speaks_series_016 and series is not None else None


def _has_adapter(run: Path) -> bool:
    return (run / "train" / "adapter" / "adapter_config.json").is_file()


def _parent_from_info(run: Path) -> Path | None:
    info = run / "generate" / "info.json"
    if not info.is_file():
        return None
    try:
        parent = json.loads(info.read_text())["Adapter Source"]["Run directory"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Path(parent)


def _newest_run(project: Path) -> Path:
    runs = sorted((p for p in project.iterdir() if p.is_dir() and _has_adapter(p)), key=lambda p: p.name)
    return runs[-1] if runs else project


MAX_FILE_BYTES = 64 * 2**20
"""Most a run-directory JSON file may hold (NSS's are kilobytes; a schema of 10,000 columns ~2 MB)."""
MAX_COLUMNS = 10_000
"""More columns than any prompt fits in a model's context."""


def _read_json(path: Path) -> Any:
    """A regular file (not a FIFO, a device, a directory), at most ``MAX_FILE_BYTES``, UTF-8 JSON."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise RunDirError(path, "missing: the run directory is incomplete (was training finished?)") from None
    except OSError as exc:
        raise RunDirError(path, f"cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise RunDirError(
            path, "not a regular file (a directory, a pipe or a device): restore it from the training run"
        )
    if info.st_size > MAX_FILE_BYTES:
        raise RunDirError(path, f"{info.st_size / 2**20:.0f} MB, more than any NSS run writes (corrupt?)")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise RunDirError(path, f"cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise RunDirError(path, f"not UTF-8 text (byte {exc.start}): restore it from the training run") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RunDirError(path, f"corrupt JSON ({exc}); restore the file from the training run") from None


def _parse(model: type[_Lenient], path: Path) -> Any:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise RunDirError(path, f"expected a JSON object, found {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RunDirError(path, f"{where}: {first['msg']}") from None


def _check_schema(path: Path, schema: dict[str, Any]) -> None:
    from jsonschema import exceptions, validators

    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as exc:
        raise RunDirError(path, f"invalid JSON schema: {exc.message}") from None
