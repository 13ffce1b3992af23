"""A vLLM look-alike in process (an ``httpx`` transport: no threads, no sockets), for CLI tests: it can
fail on cue.

Every completion is ``text()``; ``/health`` is 503 for the first ``loading_for`` asks; after
``good_requests`` completion requests it answers ``fail_status`` (or, with ``fail_status=0``, drops the
connection without an answer). ``serve(monkeypatch)`` makes every ``RemoteBackend`` the CLI builds
talk to it, at ``url``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from .vllm_core import VllmCore, as_httpx


class ScriptedVllm:
    url = "http://scripted-vllm:8000"

    def __init__(
        self,
        adapter: str,
        text: Callable[[], str],
        *,
        good_requests: int = 10**9,
        fail_status: int = 400,
        loading_for: int = 0,
    ) -> None:
        self.text = text
        self.good_requests = good_requests
        self.fail_status = fail_status
        self.loading_for = loading_for
        """``/health`` answers 503 this many times first, as a server still loading its model."""
        self.completion_requests = 0
        self.completions_answered = 0
        """Prompts answered with a completion (the failing requests' not counted)."""
        self.health_requests = 0
        self.core = VllmCore(adapters=[adapter])

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            self.health_requests += 1
            self.core.health = 503 if self.health_requests <= self.loading_for else 200
        shared = self.core.route(request.method, request.url.path, request.content)
        if shared is not None:
            return as_httpx(shared)
        self.completion_requests += 1
        if self.completion_requests > self.good_requests:
            if self.fail_status == 0:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
            return httpx.Response(self.fail_status, json={"error": {"message": "injected failure"}})
        body: dict[str, Any] = json.loads(request.content)
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        choices = [{"index": i, "text": self.text(), "finish_reason": "stop"} for i in range(len(prompts))]
        self.completions_answered += len(prompts)
        return httpx.Response(200, json={"choices": choices})

    def serve(self, monkeypatch: Any) -> ScriptedVllm:
        """Every ``RemoteBackend`` built from here on (the CLI's) talks to this server."""
        from remote_synth._backend import RemoteBackend

        real_init = RemoteBackend.__init__

        def init(backend: RemoteBackend, *args: Any, **kwargs: Any) -> None:
            kwargs["transport"] = httpx.MockTransport(self)
            real_init(backend, *args, **kwargs)

        monkeypatch.setattr(RemoteBackend, "__init__", init)
        return self
