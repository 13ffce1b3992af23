"""Generation settings, with NSS's field names, defaults and ranges.

What NSS means by them; the client's own settings are ``remote_synth._settings``.
The same model is filled from three places, lowest precedence first: the run
directory's ``safe-synthesizer-config.json`` (its ``generation`` section), the
``REMOTE_SYNTH_*`` environment variables, then explicit values (CLI flags or
keyword arguments). ``GenerateParameters.resolve`` does the layering and every
layer is validated, unlike NSS's ``from_params`` which bypasses validation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .._exceptions import ConfigError

__all__ = [
    "ENV_PREFIX",
    "GenerateParameters",
    "SchemaMethod",
    "StructuredBackend",
    "ValidationParameters",
    "format_validation_error",
]

logger = logging.getLogger(__name__)

ENV_PREFIX = "REMOTE_SYNTH_"

StructuredBackend = Literal["auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer"]
SchemaMethod = Literal["regex", "json_schema"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


class ValidationParameters(_Strict):
    """The four relaxations of grouped-record validation (NSS ``ValidationParameters``)."""

    group_by_accept_no_delineator: bool = False
    """Treat a response without BOS/EOS as one group instead of one invalid record."""
    group_by_ignore_invalid_records: bool = False
    """Drop a group's invalid records instead of failing the whole group."""
    group_by_fix_non_unique_value: bool = False
    """Overwrite the group-by values with the first record's instead of failing."""
    group_by_fix_unordered_records: bool = False
    """Sort a group by ``order_by`` instead of failing it."""


class GenerateParameters(_Strict):
    """NSS ``GenerateParameters`` plus the checks NSS lacks (temperature ≥ 0, num_records ≥ 1)."""

    num_records: int = Field(1000, ge=1, description="Valid records to generate.")
    temperature: float = Field(0.9, ge=0.0, description="Sampling temperature; lower gives fewer invalid records.")
    repetition_penalty: float = Field(1.0, gt=0.0, description="Penalty on repeated tokens (1: none).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling: the probability mass sampled from.")
    patience: int = Field(3, ge=1, description="Batches in a row above the invalid threshold before stopping.")
    invalid_fraction_threshold: float = Field(
        0.8, ge=0.0, le=1.0, description="A batch with this invalid fraction or more counts against patience."
    )
    use_structured_generation: bool = Field(
        False, description="Constrain the server's output to the table's schema (few invalid records)."
    )
    structured_generation_backend: StructuredBackend = Field("auto", description="The server's structured outputs.")
    structured_generation_schema_method: SchemaMethod = Field(
        "regex", description="How the schema is sent: NSS's regex, or JSON schema."
    )
    structured_generation_use_single_sequence: bool = Field(
        False, description="One record per completion under structured generation."
    )
    enforce_timeseries_fidelity: bool = False
    validation: ValidationParameters = Field(default_factory=ValidationParameters)
    attention_backend: str = "auto"

    @classmethod
    def resolve(
        cls,
        saved: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        *,
        use_env: bool = True,
    ) -> GenerateParameters:
        """Layer saved (run-dir) values, then environment, then explicit overrides.

        Unknown keys in ``saved`` come from other NSS versions and are ignored
        with a debug log; unknown keys in ``overrides`` are the caller's typo and
        raise ``ConfigError``.
        """
        merged: dict[str, Any] = {}
        if saved:
            merged.update(_known_fields(cls, saved))
        if use_env:
            merged = _deep_merge(merged, _env_values())
        if overrides:
            unknown = sorted(set(overrides) - set(cls.model_fields))
            if unknown:
                raise ConfigError(f"unknown generation parameter(s) {unknown}; known: {sorted(cls.model_fields)}")
            merged = _deep_merge(merged, dict(overrides))
        try:
            return cls.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc)) from None


def _known_fields(cls: type[BaseModel], saved: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(saved) - set(cls.model_fields))
    if unknown:
        logger.debug("ignoring generation settings unknown to this version: %s", unknown)
    known = {k: v for k, v in saved.items() if k in cls.model_fields}
    if isinstance(known.get("validation"), Mapping):
        known["validation"] = {k: v for k, v in known["validation"].items() if k in ValidationParameters.model_fields}
    return known


class _EnvBase(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore")


def _env_model() -> type[BaseSettings]:
    """``REMOTE_SYNTH_<FIELD>`` for every generation field (``__`` into nested models), as raw strings.

    Derived from ``GenerateParameters`` so a new field is readable from the environment too.
    """
    fields: dict[str, Any] = {}
    for name, info in GenerateParameters.model_fields.items():
        nested = isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        fields[name] = (dict[str, str] | None if nested else str | None, None)
    return create_model("_GenerateEnv", __base__=_EnvBase, **fields)


_GenerateEnv = _env_model()


def _env_values() -> dict[str, Any]:
    env = _GenerateEnv()
    return {k: v for k, v in env.model_dump().items() if v is not None}


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        elif isinstance(value, BaseModel):
            out[key] = value.model_dump()
        else:
            out[key] = value
    return out


def format_validation_error(exc: ValidationError, secret_fields: frozenset[str] | set[str] = frozenset()) -> str:
    """One line for all bad fields: ``field: message (got value)``; secrets are not echoed."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "value"
        got = "" if where in secret_fields else f" (got {err.get('input')!r})"
        parts.append(f"{where}: {err['msg']}{got}")
    return "invalid parameter " + "; ".join(parts)
