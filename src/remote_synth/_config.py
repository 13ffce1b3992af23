"""Generation settings, with NSS's field names, defaults and ranges.

The same model is filled from three places, lowest precedence first: the run
directory's ``safe-synthesizer-config.json`` (its ``generation`` section), the
``REMOTE_SYNTH_*`` environment variables, then explicit values (CLI flags or
keyword arguments). ``GenerateParameters.resolve`` does the layering and every
layer is validated, unlike NSS's ``from_params`` which bypasses validation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    JsonValue,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ._exceptions import ConfigError

__all__ = ["ENV_PREFIX", "GenerateParameters", "RemoteSettings", "ValidationParameters", "format_validation_error"]

logger = logging.getLogger(__name__)

ENV_PREFIX = "REMOTE_SYNTH_"

StructuredBackend = Literal["auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer"]
SchemaMethod = Literal["regex", "json_schema"]
AdapterCheck = Literal["strict", "lazy"]


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


class RemoteSettings(BaseSettings):
    """Where and how to reach the server; every field also reads ``REMOTE_SYNTH_<FIELD>``.

    With no ``base_url`` the backend launches (and later stops) a local server.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", validate_assignment=True, allow_inf_nan=False
    )

    base_url: Annotated[str | list[str] | None, NoDecode] = None
    """A running server (``http://gpu-host:8000``), or several replicas (a list; in the environment,
    comma-separated); None launches one."""
    """A running server (``http://gpu-host:8000``); None launches one."""
    api_key: Annotated[SecretStr | list[SecretStr] | None, NoDecode] = None
    """One key, or one per base URL (a list; in the environment, comma-separated)."""
    adapter_name: str | None = None
    """The adapter's name on the server; default: derived from the adapter's files."""
    base_model: str | None = None
    """Base model path or id for a launched server; default: the run's metadata."""
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535)
    max_concurrency: int = Field(256, ge=1)
    """Requests in flight at once, at most (the connection pool)."""
    prompts_per_request: int = Field(25, ge=1, le=1024)
    """Prompts carried by one request (vLLM's default cap is 1024)."""
    window: int = Field(256, ge=1)
    """Prompts in flight at first; the whole job's window where the server publishes no metrics."""
    max_window: int = Field(4096, ge=1)
    """Prompts in flight at most, whatever the server's metrics say."""
    share: float = Field(1.0, gt=0, le=1)
    """On a shared server, this job's share of its capacity (the most sequences seen running)."""
    load_interval: float = Field(0.5, gt=0)
    """Seconds between readings of the server's ``/metrics``."""
    max_num_seqs: int | None = Field(None, ge=1)
    """``--max-num-seqs`` for a launched server; it also starts the window there."""
    max_loras: int | None = Field(None, ge=1)
    """``--max-loras`` for a launched server (adapters in one batch); default: one per adapter, up to 8."""
    max_cpu_loras: int | None = Field(None, ge=1)
    """``--max-cpu-loras`` for a launched server (adapters kept in CPU memory); default: vLLM's."""
    offline: bool | None = None
    """Keep a launched server off the model hub; None: offline exactly when the base model is a local path."""
    request_timeout: float = Field(900.0, gt=0)
    retry_deadline: float = Field(600.0, ge=0)
    """Seconds a request may keep failing (server down, overloaded, restarting) before the job gives up."""
    wait_for_server: float = Field(0.0, ge=0)
    """Seconds to wait for a running server to become healthy and list the adapter before the job
    starts (0: it must be ready now). For stacks that start server and client together (compose)."""
    max_server_restarts: int = Field(2, ge=0)
    """Times a launched server that dies during a job is started again."""
    startup_timeout: float = Field(900.0, gt=0)
    max_model_len: int | None = Field(None, ge=16)
    dtype: str = "auto"
    server_log: Path | None = None
    log_dir: Path | None = None
    """Where a launched server's log (and ``serve``'s key file) go; default: the run directory's
    ``generate/logs``, or ``$XDG_STATE_HOME/remote-synth`` when the run directory is read-only."""
    ca_bundle: FilePath | None = None
    """A PEM file of the CAs to trust for https base URLs (a private CA); default: ``SSL_CERT_FILE``,
    else certifi's bundle."""
    use_detailed_logs: bool = False
    """Detailed validation messages (they quote record values) in logs and error tables."""
    load_adapter: bool = False
    """Register the run's adapter on the running server at ``initialize()`` (where it allows runtime
    loading), and unload it at ``teardown()`` if this job loaded it."""
    server_adapter_path: str | None = None
    """The adapter's directory on the server's machine, for ``load_adapter`` (default: the run's)."""
    adapter_check: AdapterCheck = "strict"
    """``strict``: the adapter must be listed in ``/v1/models``; ``lazy``: a server with a resolver
    plugin loads it on the first request, so an unlisted adapter is accepted."""
    priority: int | None = None
    """The job's ``priority`` in every request, for a server run with ``--scheduling-policy priority``
    (lower runs first)."""
    cache_salt: str | None = None
    """A per-tenant ``cache_salt``: prefix-cache entries are not shared with other salts."""
    session_affinity: bool = False
    """Send ``session_header: <adapter name>`` with every request, so that a router hashing on it
    (vllm-router's ``consistent_hash``) keeps this table's adapter hot on one replica."""
    session_header: str = Field("X-Session-ID", min_length=1, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
    """The header ``session_affinity`` sets (vllm-router reads ``X-Session-ID`` first)."""
    extra_headers: dict[str, str] = Field(default_factory=dict)
    """Sent with every request (gateways: tenant ids, routing); ``REMOTE_SYNTH_EXTRA_HEADERS`` is JSON."""
    extra_body: dict[str, JsonValue] = Field(default_factory=dict)
    """Merged into every completions request (gateways' own fields); ``REMOTE_SYNTH_EXTRA_BODY`` is JSON."""

    @field_validator("base_url", "api_key", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str) and "," in value:
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def base_urls(self) -> list[str]:
        """Every base URL given ([] to launch a server)."""
        if self.base_url is None:
            return []
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)

    @property
    def api_keys(self) -> list[str]:
        if self.api_key is None:
            return []
        keys = [self.api_key] if isinstance(self.api_key, SecretStr) else self.api_key
        return [k.get_secret_value() for k in keys]

    @model_validator(mode="after")
    def _bounds(self) -> RemoteSettings:
        if self.window > self.max_window:
            raise ValueError(f"window ({self.window}) must not exceed max_window ({self.max_window})")
        if self.max_loras and self.max_cpu_loras and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be at least max_loras ({self.max_loras})")
        return self

    @classmethod
    def load(cls, **values: Any) -> RemoteSettings:
        """Given values over ``REMOTE_SYNTH_*`` over defaults; a bad value is a ``ConfigError``."""
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, secret_fields={"api_key"})) from None
