"""vLLM in process for tests whose completions depend on their prompt: an ``httpx.MockTransport`` handler.

``/v1/completions`` is answered prompt by prompt with ``complete(prompt, index)``; every other
route is ``VllmCore``'s. Time-series fakes continue the record, or the group, their prompt ends with.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from .vllm_core import VllmCore, as_httpx, byte_text


class PromptVllm:
    """``httpx.MockTransport(fake)``; ``bodies`` keeps every completions request, in order."""

    finish_reason: str | None = None
    """Set on every choice when given (vLLM always sends it; older fakes left it out)."""
    tokens_each: int = 0
    """With a value, the answer has ``usage.completion_tokens``: this many per completion."""

    def __init__(self, core: VllmCore) -> None:
        self.core = core
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        shared = self.core.route(request.method, request.url.path, request.content)
        if shared is not None:
            return as_httpx(shared)
        body = json.loads(request.content)
        self.bodies.append(body)
        choices: list[dict[str, Any]] = [
            {"index": i, "text": self.complete(p, i)} for i, p in enumerate(body["prompt"])
        ]
        if self.finish_reason is not None:
            for choice in choices:
                choice["finish_reason"] = self.finish_reason
        answer: dict[str, Any] = {"choices": choices}
        if self.tokens_each:
            answer["usage"] = {"completion_tokens": self.tokens_each * len(choices)}
        return httpx.Response(200, json=answer)

    def complete(self, prompt: Any, index: int) -> str:
        """The completion of one prompt (text, or token ids), the ``index``-th of its request."""
        raise NotImplementedError


def after_last_bos(ids: list[int], bos: int) -> str:
    """The text of a token-id prompt after its last BOS: the group a 0.1.16 prompt continues."""
    return byte_text(ids[len(ids) - ids[::-1].index(bos) :])


def last_record(text: str) -> dict[str, Any]:
    """The last line of ``text``, as a record."""
    return json.loads(text.rstrip("\n").rsplit("\n", 1)[-1])
