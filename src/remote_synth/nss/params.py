"""Generation settings, with NSS's field names, defaults and ranges (NSS 0.1.16's layout).

What NSS means by them; the client's own settings are ``remote_synth._settings``.
Both saved layouts load: 0.1.16's nested ``structured_generation`` object and the
flat names NSS used before (``use_structured_generation``, ``structured_generation_backend``,
``structured_generation_schema_method``, ``structured_generation_use_single_sequence``),
which NSS 0.1.16 still accepts as aliases; within one layer a flat alias wins over the
nested value, as in NSS.
The same model is filled from three places, lowest precedence first: the run
directory's ``safe-synthesizer-config.json`` (its ``generation`` section), the
``REMOTE_SYNTH_*`` environment variables, then explicit values (CLI flags or
keyword arguments). ``GenerateParameters.resolve`` does the layering and every
layer is validated, unlike NSS's ``from_params`` which bypasses validation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .._exceptions import ConfigError

__all__ = [
    "ENV_PREFIX",
    "LEGACY_ALIASES",
    "STRUCTURAL_TAG_BACKENDS",
    "GenerateParameters",
    "ResolvedSchemaMethod",
    "SchemaMethod",
    "StructuredBackend",
    "StructuredGenerationParameters",
    "ValidationParameters",
    "format_validation_error",
    "resolve_schema_method",
]

logger = logging.getLogger(__name__)

ENV_PREFIX = "REMOTE_SYNTH_"

StructuredBackend = Literal["auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer"]
SchemaMethod = Literal["auto", "regex", "json_schema", "structural_tag"]
ResolvedSchemaMethod = Literal["regex", "json_schema", "structural_tag"]
#: The structured-outputs backends that serve an XGrammar structural tag (NSS 0.1.16).
STRUCTURAL_TAG_BACKENDS = frozenset({"auto", "xgrammar"})
#: NSS's flat names from before 0.1.16 → the field of ``structured_generation`` they set.
LEGACY_ALIASES = {
    "use_structured_generation": "enabled",
    "structured_generation_backend": "backend",
    "structured_generation_schema_method": "schema_method",
    "structured_generation_use_single_sequence": "use_single_sequence",
}


def resolve_schema_method(method: SchemaMethod, backend: str) -> ResolvedSchemaMethod:
    """NSS 0.1.16: ``auto`` is a structural tag on the backends that serve one, else NSS's regex."""
    if method != "auto":
        return method
    return "structural_tag" if backend in STRUCTURAL_TAG_BACKENDS else "regex"


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
    enforce_numeric_range: bool = True
    """Reject ``number`` values outside the training range; False drops those bounds (NSS 0.1.16)."""


class StructuredGenerationParameters(_Strict):
    """NSS 0.1.16 ``StructuredGenerationParameters``: constrain the server's output to the schema."""

    enabled: bool = Field(False, description="Constrain the server's output to the table's schema.")
    backend: StructuredBackend = Field("auto", description="The server's structured-outputs backend.")
    schema_method: SchemaMethod = Field(
        "auto", description="How the schema is sent (auto: a structural tag on auto/xgrammar, else NSS's regex)."
    )
    use_single_sequence: bool = Field(
        False, description="One record (one group) per completion, when max_sequences_per_example is 1."
    )
    max_records_per_sequence: int | None = Field(
        None, ge=1, description="Records per group under structured generation (default: the largest trained)."
    )

    @model_validator(mode="after")
    def _structural_tag_needs_xgrammar(self) -> Self:
        if self.enabled and self.schema_method == "structural_tag" and self.backend not in STRUCTURAL_TAG_BACKENDS:
            raise ValueError(f"schema_method 'structural_tag' needs backend 'xgrammar' or 'auto', not {self.backend!r}")
        return self

    @property
    def method(self) -> ResolvedSchemaMethod:
        """The schema method ``auto`` stands for with this backend."""
        return resolve_schema_method(self.schema_method, self.backend)


class GenerateParameters(_Strict):
    """NSS ``GenerateParameters`` plus the checks NSS lacks (temperature in vLLM's [0, 2], num_records ≥ 1),
    so that a value the server would refuse mid-job is refused before anything starts."""

    num_records: int = Field(1000, ge=1, description="Valid records to generate.")
    temperature: float = Field(
        0.9,
        ge=0.0,
        le=2.0,
        description="Sampling temperature, in [0, 2] as vLLM takes it; lower gives fewer invalid records.",
    )
    repetition_penalty: float = Field(1.0, gt=0.0, description="Penalty on repeated tokens (1: none).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling: the probability mass sampled from.")
    patience: int = Field(3, ge=1, description="Batches in a row above the invalid threshold before stopping.")
    invalid_fraction_threshold: float = Field(
        0.8, ge=0.0, le=1.0, description="A batch with this invalid fraction or more counts against patience."
    )
    max_tokens_multiplier: float = Field(
        1.2, gt=0.0, description="max_tokens per completion: the longest training example times this."
    )
    structured_generation: StructuredGenerationParameters = Field(default_factory=StructuredGenerationParameters)
    enforce_timeseries_fidelity: bool = False
    """Saved by NSS and read, but unused there too (0.1.16: a TODO with no reader)."""
    validation: ValidationParameters = Field(default_factory=ValidationParameters)
    attention_backend: str | None = "auto"

    @model_validator(mode="before")
    @classmethod
    def _migrate_flat_names(cls, data: Any) -> Any:
        return migrate_aliases(data) if isinstance(data, Mapping) else data

    @property
    def use_structured_generation(self) -> bool:
        """The flat name NSS used before 0.1.16 (``structured_generation.enabled``)."""
        return self.structured_generation.enabled

    @property
    def structured_generation_backend(self) -> StructuredBackend:
        """The flat name NSS used before 0.1.16 (``structured_generation.backend``)."""
        return self.structured_generation.backend

    @property
    def structured_generation_schema_method(self) -> SchemaMethod:
        """The flat name NSS used before 0.1.16 (``structured_generation.schema_method``)."""
        return self.structured_generation.schema_method

    @property
    def structured_generation_use_single_sequence(self) -> bool:
        """The flat name NSS used before 0.1.16 (``structured_generation.use_single_sequence``)."""
        return self.structured_generation.use_single_sequence

    @classmethod
    def resolve(
        cls,
        saved: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        *,
        use_env: bool = True,
    ) -> GenerateParameters:
        """Layer saved (run-dir) values, then environment, then explicit overrides.

        Each layer's flat names are moved into ``structured_generation`` first, so a
        later layer wins whichever spelling either uses. Unknown keys in ``saved``
        come from other NSS versions: they are ignored with a warning naming them
        (one may be a setting that changes the output). Unknown keys in
        ``overrides`` are the caller's typo and raise ``ConfigError``.
        """
        merged: dict[str, Any] = {}
        if saved:
            merged.update(_known_fields(migrate_aliases(saved)))
        if use_env:
            merged = _deep_merge(merged, migrate_aliases(_env_values()))
        if overrides:
            known = set(cls.model_fields) | set(LEGACY_ALIASES)
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise ConfigError(f"unknown generation parameter(s) {unknown}; known: {sorted(known)}")
            merged = _deep_merge(merged, migrate_aliases(overrides))
        try:
            return cls.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc)) from None


def migrate_aliases(layer: Mapping[str, Any]) -> dict[str, Any]:
    """NSS's flat structured-generation names moved into ``structured_generation`` (flat wins, as in NSS)."""
    out = {k: v for k, v in layer.items() if k not in LEGACY_ALIASES}
    flat = {LEGACY_ALIASES[k]: v for k, v in layer.items() if k in LEGACY_ALIASES}
    if flat:
        nested = out.get("structured_generation")
        if isinstance(nested, BaseModel):
            nested = nested.model_dump()
        out["structured_generation"] = {**(nested if isinstance(nested, Mapping) else {}), **flat}
    return out


_NESTED: dict[str, type[BaseModel]] = {
    "validation": ValidationParameters,
    "structured_generation": StructuredGenerationParameters,
}


def _known_fields(saved: Mapping[str, Any]) -> dict[str, Any]:
    """The saved settings this version knows; the others are named in a warning, never dropped silently."""
    unknown = sorted(set(saved) - set(GenerateParameters.model_fields))
    known = {k: v for k, v in saved.items() if k in GenerateParameters.model_fields}
    for section, model in _NESTED.items():
        if isinstance(known.get(section), Mapping):
            unknown += sorted(f"{section}.{k}" for k in known[section] if k not in model.model_fields)
            known[section] = {k: v for k, v in known[section].items() if k in model.model_fields}
    if unknown:
        logger.warning("the run's generation settings %s are unknown to this version of remote-synth: ignored",
                       unknown)  # fmt: skip
    return known


class _EnvBase(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore")


def _env_model() -> type[BaseSettings]:
    """``REMOTE_SYNTH_<FIELD>`` for every generation field (``__`` into nested models), as raw strings.

    Derived from ``GenerateParameters`` so a new field is readable from the environment too;
    NSS's flat names before 0.1.16 (``REMOTE_SYNTH_USE_STRUCTURED_GENERATION``) stay readable.
    """
    fields: dict[str, Any] = {name: (str | None, None) for name in LEGACY_ALIASES}
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
        got = "" if where.split(".")[0] in secret_fields else f" (got {err.get('input')!r})"
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}{got}")
    return "invalid parameter " + "; ".join(parts)
