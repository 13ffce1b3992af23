"""The generation contract every backend follows (NSS ``generation/backend.py``).

Lifecycle: ``initialize()`` → ``prepare_params(**kwargs)`` → ``generate()``
[→ ``generate()`` …] → ``teardown()``. Callers run it inside ``try/finally``
so ``teardown()`` always runs; it must be idempotent and each cleanup step
isolated, so one failing step never skips the others.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .results import DataActionsFn, GenerateJobResults

__all__ = ["GeneratorBackend"]

logger = logging.getLogger("remote_synth.backend")

_CONTRACT = ("initialize", "prepare_params", "generate", "teardown")


class GeneratorBackend(ABC):
    """Abstract generator backend.

    ```python
    backend = SomeBackend(config, model_metadata, workdir)
    try:
        backend.initialize()
        backend.prepare_params(temperature=0.7)
        results = backend.generate()
    finally:
        backend.teardown()
    ```
    """

    #: The function that produces completions, set by ``initialize``.
    gen_method: Callable[..., Any] | None = None
    #: The last ``generate()`` results.
    gen_results: GenerateJobResults | None = None
    config: Any = None
    model_metadata: Any = None
    #: True when generation happens on another process or host.
    remote: bool = False
    #: Seconds the last ``generate()`` took.
    elapsed_time: float = 0.0
    workdir: Path | None = None

    @classmethod
    def __subclasshook__(cls, subclass: type) -> bool:
        """Structural check with the contract's real method names, for this ABC only.

        NSS's hook looked for methods that do not exist (``prepare_args``,
        ``load``), ignored ``teardown`` and applied to every subclass.
        """
        if cls is not GeneratorBackend:
            return NotImplemented
        if all(callable(getattr(subclass, name, None)) for name in _CONTRACT):
            return True
        return NotImplemented

    @abstractmethod
    def initialize(self) -> None:
        """Acquire what generation needs (an engine, a server, a connection)."""

    @abstractmethod
    def prepare_params(self, **kwargs: Any) -> None:
        """Set sampling parameters (NSS names); ``generate()`` uses them as given."""

    @abstractmethod
    def generate(self, data_actions_fn: DataActionsFn | None = None) -> GenerateJobResults:
        """Generate until the target, a stop condition or an error."""

    @abstractmethod
    def teardown(self) -> None:
        """Release everything ``initialize`` acquired; idempotent, steps isolated."""

    @staticmethod
    def run_cleanup_steps(steps: list[tuple[str, Callable[[], Any]]]) -> list[tuple[str, BaseException]]:
        """Run every step even when one fails; return the failures for the caller to report."""
        failures: list[tuple[str, BaseException]] = []
        for name, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - isolation is the point
                logger.warning("cleanup step %r failed: %s", name, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
                failures.append((name, exc))
        return failures
