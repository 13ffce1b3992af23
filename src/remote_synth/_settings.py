"""How this client reaches, launches and drives a server: the settings NSS has no name for.

``RemoteSettings`` is one flat model (``RemoteSettings(base_url=..., api_key=...)``), built from
three by concern, so each part of the code is typed against only what it reads:

- ``ClientSettings``: where the server is and how each request is sent (the transport's);
- ``LaunchSettings``: how a local server is launched when no base URL is given (``_server``);
- ``EngineSettings``: how the engine paces a job (window, share, metrics readings).

Every field also reads ``REMOTE_SYNTH_<FIELD>``; each field's docstring is its help text, and the
CLI derives its flags from these fields (``_cli.options``), so a new setting is one field here.
"""

from __future__ import annotations

import re
import ssl
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, FilePath, JsonValue, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from ._exceptions import ConfigError
from ._naming import AdapterNaming
from ._urls import redact_url
from .nss.params import ENV_PREFIX, format_validation_error

__all__ = ["AdapterCheck", "ClientSettings", "EngineSettings", "LaunchSettings", "RemoteSettings"]

AdapterCheck = Literal["strict", "lazy"]
HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
"""An HTTP header name (RFC 9110 token)."""
HEADER_VALUE = r"^[\x20-\x7e\t]*$"
"""A header value we send: printable ASCII (httpx cannot encode others; no line breaks)."""


class _Settings(BaseSettings):
    """Unknown names are refused (a typo must not fall back to a default: ``base_ur=`` would launch a
    server); every bad value is a ``ConfigError`` naming the field, never the key's value."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_assignment=True, allow_inf_nan=False,
        use_attribute_docstrings=True,
    )  # fmt: skip

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, secret_fields={"api_key", "base_url"})) from None
        except SettingsError as exc:  # a JSON-valued variable that is not JSON
            field = str(exc).partition('field "')[2].partition('"')[0]
            raise ConfigError(f"{ENV_PREFIX}{field.upper()}: not valid JSON (write it as a JSON object)") from None


class ClientSettings(_Settings):
    """Where the server is, and what every request carries."""

    base_url: Annotated[str | list[str] | None, NoDecode] = None
    """A running server (``http://gpu-host:8000``), or several replicas (a list; in the environment,
    comma-separated); None launches one."""
    api_key: Annotated[SecretStr | list[SecretStr] | None, NoDecode] = None
    """One key, or one per base URL (a list; in the environment, comma-separated)."""
    adapter_name: str | None = None
    """The adapter's name on the server (default: derived from its files)."""
    max_concurrency: int = Field(256, ge=1)
    """Requests in flight at once, at most."""
    prompts_per_request: int = Field(25, ge=1, le=1024)
    """Prompts carried by one request."""
    request_timeout: float = Field(900.0, gt=0)
    """Seconds a request may wait for each read of its answer."""
    retry_deadline: float = Field(600.0, ge=0)
    """Seconds a request may keep failing before the job gives up."""
    wait_for_server: float = Field(0.0, ge=0)
    """Seconds to wait for a --base-url server to be ready (a stack starting it alongside)."""
    ca_bundle: FilePath | None = None
    """PEM file of the CAs to trust for https base URLs (default: SSL_CERT_FILE, else certifi's)."""
    load_adapter: bool = False
    """Register the adapter on the running server first (and unload it after, if this job loaded it)."""
    server_adapter_path: str | None = None
    """The adapter's directory on the server's machine (--load-adapter)."""
    adapter_check: AdapterCheck = "strict"
    """lazy: accept an adapter the server does not list yet (a resolver plugin loads it)."""
    adapter_naming: AdapterNaming = "auto"
    """How requests name the adapter: plain (vLLM, llm-d, KServe), base:adapter (Ray Serve LLM), or
    auto (base:adapter when /v1/models lists the adapter only so)."""
    priority: int | None = None
    """Request priority, for a server with --scheduling-policy priority (lower runs first)."""
    cache_salt: str | None = None
    """This tenant's prefix-cache salt (no cache sharing with other salts)."""
    session_affinity: bool = False
    """Send X-Session-ID: ADAPTER, so a router hashing on it (vllm-router consistent_hash) keeps this
    table on one replica."""
    session_header: str = Field("X-Session-ID", min_length=1, pattern=HEADER_NAME)
    """The header session_affinity sets (vllm-router reads X-Session-ID first)."""
    extra_headers: dict[Annotated[str, Field(pattern=HEADER_NAME)], Annotated[str, Field(pattern=HEADER_VALUE)]] = (
        Field(default_factory=dict)
    )
    """Sent with every request (gateways: tenant ids, routing); ``REMOTE_SYNTH_EXTRA_HEADERS`` is JSON."""
    extra_body: dict[str, JsonValue] = Field(default_factory=dict)
    """Merged into every completions request (gateways' own fields); ``REMOTE_SYNTH_EXTRA_BODY`` is JSON."""

    @field_validator("base_url", "api_key", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str) and "," in value:
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("ca_bundle", mode="after")
    @classmethod
    def _loadable_bundle(cls, value: Path | None) -> Path | None:
        """Loaded now, not at the first https request: a file that is no PEM bundle is one line."""
        if value is not None:
            try:
                ssl.create_default_context(cafile=str(value))
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ValueError(f"{value} is not a PEM file of CA certificates ({exc})") from None
        return value

    @field_validator("api_key", mode="after")
    @classmethod
    def _printable_keys(cls, value: SecretStr | list[SecretStr] | None) -> SecretStr | list[SecretStr] | None:
        keys = [] if value is None else [value] if isinstance(value, SecretStr) else value
        if any(not re.fullmatch(r"[\x21-\x7e]+", k.get_secret_value()) for k in keys):
            raise ValueError("a key must be printable ASCII without spaces (it goes in an HTTP header)")
        return value

    @field_validator("base_url", mode="after")
    @classmethod
    def _urls(cls, value: str | list[str] | None) -> str | list[str] | None:
        """An empty or unparsable base URL is an error, never a reason to launch a server."""
        if value is None:
            return None
        for url in [value] if isinstance(value, str) else value:
            _check_url(url)
        if not value:
            raise ValueError("no URL given (unset it to launch a local server)")
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


def _check_url(url: str) -> None:
    """Scheme http(s), a host, a port in range (what httpx would only find out mid-request)."""
    parts = urllib.parse.urlsplit(url.strip())
    shown = repr(redact_url(url))
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"base URL {shown} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"base URL {shown} has no host")
    try:
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError:
        raise ValueError(f"base URL {shown} has a port out of range (1-65535)") from None


class LaunchSettings(_Settings):
    """How a local server is launched (and kept up) when no base URL is given."""

    base_model: str | None = None
    """Base model path or id for a launched server (default: the run's metadata); with
    --adapter-naming base:adapter, the base a request names."""
    host: str = "127.0.0.1"
    """Address a launched server listens on."""
    port: int | None = Field(None, ge=1, le=65535)
    """Port a launched server listens on (default: a free one)."""
    max_num_seqs: int | None = Field(None, ge=1)
    """vLLM's --max-num-seqs for a launched server; it also starts the window there."""
    max_loras: int | None = Field(None, ge=1)
    """Adapters in one batch (default: one per adapter, up to 8)."""
    max_cpu_loras: int | None = Field(None, ge=1)
    """Adapters kept in CPU memory (default: vLLM's)."""
    offline: bool | None = None
    """Keep vLLM off the model hub (default: offline exactly when the base model is a local path)."""
    max_server_restarts: int = Field(2, ge=0)
    """Times a launched server that dies during a job is started again."""
    startup_timeout: float = Field(900.0, gt=0)
    """Seconds a launched server may take to become ready."""
    max_model_len: int | None = Field(None, ge=16)
    """Server context length (default: fits NSS's max_seq_length)."""
    dtype: str = "auto"
    """vLLM's --dtype for a launched server."""
    server_log: Path | None = None
    """A launched server's log file (default: in log_dir)."""
    otlp_traces_endpoint: str | None = None
    """Where a launched vLLM sends its traces (its --otlp-traces-endpoint; a URL ending in
    /v1/traces is OTLP/HTTP, anything else gRPC): it continues each request's traceparent."""
    adapter_store: Path | None = None
    """A directory of adapters published with `adapters publish`: a launched server loads each on
    the first request that names it (vLLM's filesystem resolver)."""
    log_dir: Path | None = None
    """Where a launched server's log and serve's key file go (default: RUN_DIR/generate/logs, or
    $XDG_STATE_HOME/remote-synth when the run directory is read-only)."""


class EngineSettings(_Settings):
    """How the engine paces a job against the server's capacity."""

    window: int = Field(256, ge=1)
    """Prompts in flight at first; the fixed window where the server has no /metrics."""
    max_window: int = Field(4096, ge=1)
    """Prompts in flight at most, whatever the server's metrics say."""
    share: float = Field(1.0, gt=0, le=1)
    """This job's share of a shared server's capacity, in (0, 1]."""
    load_interval: float = Field(0.5, gt=0)
    """Seconds between readings of the server's /metrics."""
    use_detailed_logs: bool = False
    """Detailed validation messages (they quote record values)."""
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """Serve the job's Prometheus metrics on this port while it runs (default: none)."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics listen on (0.0.0.0 for a Prometheus on another machine)."""
    log_format: Literal["text", "json"] = "text"
    """Log lines as text, or one JSON object each (for a log shipper)."""


class RemoteSettings(ClientSettings, LaunchSettings, EngineSettings):
    """Where and how to reach the server; every field also reads ``REMOTE_SYNTH_<FIELD>``.

    With no ``base_url`` the backend launches (and later stops) a local server.
    """

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
        return cls(**{k: v for k, v in values.items() if v is not None})
