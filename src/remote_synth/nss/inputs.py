"""NSS's own objects as ours: a ``Workdir``, ``SafeSynthesizerParameters``, NSS's ``ModelMetadata``.

``RemoteBackend`` takes what NSS's ``GeneratorBackend`` is given (paths or NSS objects); these turn
each into this package's models, read through their JSON so no NSS import is needed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .._exceptions import ConfigError
from .params import GenerateParameters
from .rundir import ModelMetadata, RunDirectory

__all__ = ["generation_parameters", "metadata_for", "run_directory"]


def run_directory(workdir: Any) -> RunDirectory:
    if isinstance(workdir, RunDirectory):
        return workdir
    if isinstance(workdir, (str, Path)):
        return RunDirectory.open(workdir)
    # An NSS Workdir: where its artifacts are (a generation run's parent: ``source_run_dir``).
    run_dir = getattr(workdir, "source_run_dir", None) or getattr(workdir, "run_dir", None)
    if run_dir is None:
        raise ConfigError(f"workdir must be a run directory path or an NSS Workdir, not {type(workdir).__name__}")
    return RunDirectory.open(run_dir)


def generation_parameters(config: Any, run: RunDirectory) -> GenerateParameters:
    if isinstance(config, GenerateParameters):
        return config
    saved = run.config.generation
    if config is None:
        return GenerateParameters.resolve(saved)
    if isinstance(config, Mapping):
        return GenerateParameters.resolve(saved, config)
    generation = getattr(config, "generation", None)  # NSS SafeSynthesizerParameters
    if isinstance(generation, BaseModel):
        return GenerateParameters.resolve(generation.model_dump(mode="json"), use_env=False)
    raise ConfigError(f"config must be GenerateParameters, a mapping or NSS parameters, not {type(config).__name__}")


def metadata_for(metadata: Any, run: RunDirectory) -> ModelMetadata:
    if metadata is None:
        return run.metadata
    if isinstance(metadata, ModelMetadata):
        return metadata
    if isinstance(metadata, BaseModel):  # NSS ModelMetadata
        return ModelMetadata.model_validate(metadata.model_dump(mode="json"))
    raise ConfigError(f"model_metadata must be ModelMetadata or NSS ModelMetadata, not {type(metadata).__name__}")
