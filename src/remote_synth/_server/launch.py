"""How a run directory's adapter is served: its name, and the settings that launch vLLM for it.

Plain functions of a run directory and settings, so ``serve``, the tests and the
benchmarks need no backend to launch a server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._exceptions import ConfigError
from .._settings import RemoteSettings
from ..nss.params import GenerateParameters
from ..nss.rundir import MAX_ROPE_SCALING_FACTOR, ModelMetadata, RunDirectory
from .vllm import ServerSettings

__all__ = [
    "adapter_name_for",
    "files_dir",
    "is_loopback",
    "launch_settings",
    "rope_overrides",
    "serve_settings",
    "state_dir",
    "structured_outputs_backend",
]

logger = logging.getLogger("remote_synth.launch")


def adapter_name_for(run: RunDirectory) -> str:
    """A name that is the same wherever the run directory is copied (laptop, GPU host, container)."""
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "dataset_schema.json"):
        digest.update((run.adapter_dir / name).read_bytes())
    return "nss-" + digest.hexdigest()[:12]


def launch_settings(
    run: RunDirectory,
    settings: RemoteSettings | None = None,
    config: GenerateParameters | None = None,
    metadata: ModelMetadata | None = None,
) -> ServerSettings:
    """The vLLM launch for ``run``'s adapter (``base_model``, port, key… from ``settings``)."""
    s = settings if settings is not None else RemoteSettings()
    params = config if config is not None else GenerateParameters.resolve(run.config.generation)
    meta = metadata if metadata is not None else run.metadata
    if run.adapter_config.modules_to_save:
        raise ConfigError(f"{run.adapter_dir}: adapters with modules_to_save cannot be served by vLLM")
    model = s.base_model or meta.model_name_or_path
    return ServerSettings(
        model=model,
        adapter_name=s.adapter_name or adapter_name_for(run),
        adapter_path=run.adapter_dir,
        max_loras=s.max_loras,
        max_cpu_loras=s.max_cpu_loras,
        max_lora_rank=max([run.adapter_config.r, *_store_ranks(s.adapter_store)]),
        adapter_store=s.adapter_store,
        otlp_traces_endpoint=s.otlp_traces_endpoint,
        max_model_len=s.max_model_len or _fitting_context(model, meta),
        hf_overrides=rope_overrides(meta),
        max_num_seqs=s.max_num_seqs,
        offline=s.offline if s.offline is not None else Path(model).exists(),
        host=s.host,
        port=s.port,
        api_key=s.api_keys[0] if s.api_keys else None,
        dtype=s.dtype,
        structured_outputs_backend=structured_outputs_backend(params),
        log_file=s.server_log or files_dir(run, s) / "vllm-server.log",
        startup_timeout=s.startup_timeout,
    )


def _store_ranks(store: Path | None) -> list[int]:
    """The ranks of the adapters in ``store`` (a server must hold the largest), checked to be a directory."""
    if store is None:
        return []
    if not store.is_dir():
        raise ConfigError(f"adapter store {store}: not a directory (create it, then `adapters publish` into it)")
    from .store import store_ranks

    return store_ranks(store)


def serve_settings(runs: Sequence[RunDirectory], settings: RemoteSettings | None = None) -> ServerSettings:
    """One server for several runs' adapters: same base model, the largest rank and context of them.

    Mixed base models cannot share a server, and two runs with the same adapter would be
    served twice under one name: both are refused, naming the runs.
    """
    if not runs:
        raise ConfigError("name at least one run directory")
    s = settings if settings is not None else RemoteSettings()
    if len(runs) > 1 and s.adapter_name:
        raise ConfigError("--adapter-name names one adapter; with several run directories each keeps its own name")
    launches = [launch_settings(run, s) for run in runs]
    first = launches[0]
    for run, launch in zip(runs[1:], launches[1:], strict=True):
        if launch.model != first.model:
            raise ConfigError(
                f"{run.path} was trained on {launch.model}, {runs[0].path} on {first.model}: "
                "one server serves adapters of one base model"
            )
        if launch.hf_overrides != first.hf_overrides:
            raise ConfigError(
                f"{run.path} and {runs[0].path} were trained with different RoPE scaling: "
                "one server serves one (serve them apart)"
            )
    names = [launch.adapter_name for launch in launches]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"the same adapter ({', '.join(twice)}) is named twice; name each run directory once")
    contexts = [launch.max_model_len for launch in launches]
    backends = {launch.structured_outputs_backend for launch in launches}
    return dataclasses.replace(
        first,
        more_adapters=tuple((launch.adapter_name, launch.adapter_path) for launch in launches[1:]),
        max_lora_rank=max(launch.max_lora_rank for launch in launches),
        max_model_len=None if None in contexts else max(c for c in contexts if c is not None),
        structured_outputs_backend=backends.pop() if len(backends) == 1 else "auto",
    )


def files_dir(run: RunDirectory, settings: RemoteSettings) -> Path:
    """Where a server's log and key file go: ``--log-dir``, else the run's ``generate/logs``, else the state dir.

    A run directory may be read-only (a shared mount, a container volume): then
    ``$XDG_STATE_HOME/remote-synth/<adapter name>`` (``~/.local/state/…``) takes its place.
    """
    if settings.log_dir is not None:
        return settings.log_dir
    preferred = run.path / "generate" / "logs"
    if _writable(preferred):
        return preferred
    fallback = state_dir() / (settings.adapter_name or adapter_name_for(run))
    logger.info("%s is not writable: logs and keys go to %s", preferred, fallback)
    return fallback


def state_dir() -> Path:
    """``$XDG_STATE_HOME/remote-synth``, or ``~/.local/state/remote-synth`` (the XDG default)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "remote-synth"


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".remote-synth-check-"):
            return True
    except OSError:
        return False


def structured_outputs_backend(config: GenerateParameters) -> str:
    """NSS's choice, except that a JSON schema or a structural tag on "auto" gets xgrammar, which
    serves tags and can forbid white space between JSON tokens."""
    sg = config.structured_generation
    if sg.enabled and sg.backend == "auto" and sg.method in ("json_schema", "structural_tag"):
        return "xgrammar"
    return sg.backend


def rope_overrides(metadata: ModelMetadata) -> dict[str, Any] | None:
    """NSS 0.1.16 ``_build_rope_hf_overrides``: the trained RoPE scaling, when its factor is above 1."""
    rope = metadata.rope_scaling
    if rope is None or not rope.factor or rope.factor <= 1.0:
        return None
    parameters = dict(rope.rope_parameters or {})
    rope_type = parameters.get("rope_type", rope.rope_type or "default")
    parameters.update(
        rope_type="linear" if rope_type == "default" else rope_type,
        factor=float(min(rope.factor, MAX_ROPE_SCALING_FACTOR)),
        original_max_position_embeddings=metadata.base_max_seq_length,
        rope_theta=float(rope.theta if rope.theta is not None else 10000.0),
    )
    return {"rope_parameters": parameters}


def _fitting_context(model: str, metadata: ModelMetadata) -> int | None:
    """``--max-model-len`` for a launched server: NSS's max_seq_length when the base allows it,
    and always with a RoPE scaling (NSS 0.1.16 serves the scaled context: ``rope_overrides``).

    Only a local base model's config can be read offline; otherwise vLLM decides.
    """
    if rope_overrides(metadata) is not None:
        return metadata.max_seq_length
    config_file = Path(model) / "config.json"
    if not config_file.is_file():
        return None
    try:
        native = int(json.loads(config_file.read_text())["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return min(native, metadata.max_seq_length)
