"""The one vLLM look-alike core: the routes every fake shares, with completions left to the fake.

``/health``, ``/v1/models``, ``/tokenize``, ``/metrics`` and the runtime adapter routes answer
here, as vLLM's server does; a fake (in-process ``httpx`` transport, stdlib HTTP server, a
simulator, a process standing in for vLLM) answers ``/v1/completions`` in its own way and asks
``route`` for the rest. Standard library only: a fake process imports it by path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

Answer = tuple[int, Any]
"""(status, JSON payload), or a ``str`` payload for text (``/metrics``)."""


@dataclass
class VllmCore:
    adapters: list[str] = field(default_factory=lambda: ["nss-adapter"])
    base: str = "base"
    context: int = 2048
    """The base model's ``max_model_len`` as ``/v1/models`` lists it."""
    prompt_tokens: int = 20
    """What ``/tokenize`` counts for any prompt."""
    health: int = 200
    metrics: str | None = None
    """``/metrics`` text; None answers 404, as a gateway without vLLM's metrics."""
    runtime_adapters: bool = False
    """Whether ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` exist."""
    byte_tokens: bool = False
    """``/tokenize`` without special tokens gives ``byte_ids`` (the prompt's count stays ``prompt_tokens``)."""
    store: list[str] = field(default_factory=list)
    """Adapters in an adapter store: loaded (and listed from then on) by the first request naming them."""

    def route(self, method: str, path: str, body: bytes = b"") -> Answer | None:
        """vLLM's answer for a shared route, or None for ``/v1/completions`` (the fake's own)."""
        if path == "/v1/completions":
            return self._unknown_model(body)
        if path == "/health":
            return self.health, {}
        if path == "/v1/models":
            data = [{"id": self.base, "max_model_len": self.context}]
            return 200, {"data": data + [{"id": a, "parent": self.base} for a in self.adapters]}
        if path == "/tokenize":
            request = json.loads(body or b"{}")
            if self.byte_tokens and request.get("add_special_tokens") is False:
                tokens = byte_ids(str(request.get("prompt", "")))
                return 200, {"count": len(tokens), "tokens": tokens}
            return 200, {"count": self.prompt_tokens, "tokens": [0] * self.prompt_tokens}
        if path == "/metrics":
            return (404, {"detail": "Not Found"}) if self.metrics is None else (200, self.metrics)
        if method == "POST" and path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter") and self.runtime_adapters:
            return self._adapter_route(path, json.loads(body or b"{}"))
        return 404, {"detail": "Not Found"}

    def _unknown_model(self, body: bytes) -> Answer | None:
        """vLLM's 404 for a model it neither serves nor resolves; None lets the fake answer."""
        try:
            model = json.loads(body or b"{}").get("model")
        except (ValueError, AttributeError):
            return None
        if model is None or model == self.base or model in self.adapters:
            return None
        if model in self.store:
            self.adapters.append(model)
            return None
        return 404, {"error": {"message": f"The model `{model}` does not exist.", "type": "NotFoundError", "code": 404}}

    def _adapter_route(self, path: str, request: dict[str, Any]) -> Answer:
        name = str(request.get("lora_name"))
        if path == "/v1/load_lora_adapter":
            if name in self.adapters:
                return 400, {"error": {"message": f"The lora adapter '{name}' has already been loaded."}}
            self.adapters.append(name)
            return 200, f"Success: LoRA adapter '{name}' added successfully."
        if name not in self.adapters:
            return 404, {"error": {"message": f"The lora adapter '{name}' cannot be found."}}
        self.adapters.remove(name)
        return 200, f"Success: LoRA adapter '{name}' removed successfully."


def metrics_text(running: float, waiting: float, model: str = "base") -> str:
    """vLLM's two scheduler gauges, as ``/metrics`` renders them."""
    return (
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{model_name="{model}"}} {running}\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{model_name="{model}"}} {waiting}\n'
    )


def as_httpx(answer: Answer) -> Any:
    """An ``httpx.Response`` of an answer (httpx is imported here, so the core stays stdlib-only)."""
    import httpx

    status, payload = answer
    return httpx.Response(status, text=payload) if isinstance(payload, str) else httpx.Response(status, json=payload)


def as_bytes(answer: Answer) -> tuple[int, bytes, str]:
    """(status, body, content type) of an answer, for a stdlib HTTP server."""
    status, payload = answer
    if isinstance(payload, str):
        return status, payload.encode(), "text/plain"
    return status, json.dumps(payload).encode(), "application/json"


BYTE_OFFSET = 3
"""Ids 0-2 are <unk>, <s> and </s>; a byte b is id b + 3."""


def byte_ids(text: str) -> list[int]:
    """A reversible stand-in tokenizer: one id per UTF-8 byte."""
    return [b + BYTE_OFFSET for b in text.encode("utf-8")]


def byte_text(ids: list[int]) -> str:
    return bytes(i - BYTE_OFFSET for i in ids if i >= BYTE_OFFSET).decode("utf-8", "replace")
