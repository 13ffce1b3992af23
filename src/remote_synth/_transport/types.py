"""What the engine needs from the transport, and nothing of HTTP: completions, load, the sender.

The engine imports this module only; ``InferenceClient`` (``client.py``) is one ``CompletionSender``,
and unit tests and simulators may be others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .retry import RetryPolicy

__all__ = ["Completion", "CompletionSender", "ServerInfo", "ServerLoad", "completions_body"]


@dataclass(frozen=True)
class Completion:
    """One completion of a prompt."""

    text: str
    finish_reason: str | None = None
    tokens: int = 0
    """Tokens generated: the response's ``usage.completion_tokens``, shared among its choices by length
    (vLLM reports a total per response; the shares add up to it exactly)."""


@dataclass(frozen=True)
class ServerLoad:
    """What vLLM's ``/metrics`` says about its scheduler (summed over engines and models)."""

    running: float
    """Sequences being generated."""
    waiting: float
    """Sequences queued for a slot."""


@dataclass(frozen=True)
class ServerInfo:
    """What generation needs to know about the server."""

    context: int | None
    """The adapter's context length (``max_model_len``), when the server says."""
    prompt_tokens: int
    structured_outputs: Mapping[str, Any] | None = None
    """The constraint the server accepted (of those offered, the first), None when none was offered."""
    model: str | None = None
    """The ``model`` requests name the adapter by (``models.request_name``); None: the adapter's name."""

    @property
    def room(self) -> int | None:
        """Tokens left after the prompt in the context (None: the server does not say)."""
        return None if self.context is None else self.context - self.prompt_tokens


class CompletionSender(Protocol):
    """What the scheduler sends through: completions, the server's load, and the retry policy to use."""

    retry: RetryPolicy

    async def send_completions(self, body: dict[str, Any]) -> list[Completion]: ...

    async def load(self) -> ServerLoad | None: ...


Prompt = str | Sequence[int]
"""A prompt as text, or as token ids (vLLM takes either; NSS 0.1.16's time series send ids)."""


def completions_body(model: str, prompts: Sequence[Prompt], params: Mapping[str, object]) -> dict[str, Any]:
    """A ``/v1/completions`` body: the sampling fields, the model, the prompts, one sample each."""
    return {**params, "model": model, "prompt": [p if isinstance(p, str) else list(p) for p in prompts], "n": 1}
