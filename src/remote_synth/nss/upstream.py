"""NSS itself (``nemo_safe_synthesizer``), where it is installed: its backend ABC and its result type.

Importing NSS takes seconds (it loads its whole generation stack), so nothing here imports it until
asked: a caller that hands ``RemoteBackend`` NSS's own objects has NSS loaded already.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from .results import GenerateJobResults

__all__ = ["as_nss_results", "is_nss_object", "register_as_nss_backend"]


def is_nss_object(value: object) -> bool:
    """Whether ``value`` is one of NSS's own objects (its parameters, metadata or workdir)."""
    return type(value).__module__.split(".")[0] == "nemo_safe_synthesizer"


def register_as_nss_backend(cls: type) -> None:
    """Make ``cls`` an NSS ``GeneratorBackend`` (a virtual subclass: ``isinstance`` holds)."""
    backend = importlib.import_module("nemo_safe_synthesizer.generation.backend")
    backend.GeneratorBackend.register(cls)


def as_nss_results(results: GenerateJobResults) -> Any:
    """The same results as NSS's ``GenerateJobResults`` (its status enum), for NSS's evaluate and save.

    Fields NSS's class lacks (older releases) are left out; fields ours lacks keep NSS's defaults.
    """
    module = importlib.import_module("nemo_safe_synthesizer.generation.results")
    status_type = importlib.import_module("nemo_safe_synthesizer.generation.utils").GenerationStatus
    theirs = {f.name for f in dataclasses.fields(module.GenerateJobResults)}
    ours = {f.name: getattr(results, f.name) for f in dataclasses.fields(results) if f.name in theirs}
    ours["status"] = status_type(results.status.value)
    return module.GenerateJobResults(**ours)
