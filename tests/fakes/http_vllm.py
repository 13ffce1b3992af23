"""A tiny vLLM look-alike over real HTTP (stdlib), for CLI tests that need a URL: it can fail on cue.

Every completion is ``text()``; ``/health`` is 503 for the first ``loading_for`` asks; after ``good_requests`` completion requests it answers ``fail_status``
(or, with ``fail_status=0``, closes the connection without an answer).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .vllm_core import VllmCore, as_bytes


class HttpVllm:
    def __init__(
        self,
        adapter: str,
        text: Callable[[], str],
        *,
        good_requests: int = 10**9,
        fail_status: int = 400,
        loading_for: int = 0,
    ) -> None:
        self.adapter = adapter
        self.text = text
        self.good_requests = good_requests
        self.fail_status = fail_status
        self.completion_requests = 0
        self.loading_for = loading_for
        """``/health`` answers 503 this many times first, as a server still loading its model."""
        self.health_requests = 0
        self.core = VllmCore(adapters=[adapter])
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/health":
                    owner.health_requests += 1
                    owner.core.health = 503 if owner.health_requests <= owner.loading_for else 200
                return self._send(*(owner.core.route("GET", self.path) or (404, {})))

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                shared = owner.core.route("POST", self.path, raw)
                if shared is not None:
                    return self._send(*shared)
                body = json.loads(raw)
                owner.completion_requests += 1
                if owner.completion_requests > owner.good_requests:
                    if owner.fail_status == 0:
                        self.close_connection = True
                        self.connection.close()
                        return None
                    return self._send(owner.fail_status, {"error": {"message": "injected failure"}})
                prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
                return self._send(200, {"choices": [{"index": i, "text": owner.text(), "finish_reason": "stop"}
                                                    for i in range(len(prompts))]})  # fmt: skip

            def _send(self, code: int, payload: Any) -> None:
                code, data, kind = as_bytes((code, payload))
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # type: ignore[method-assign]  # dropped on purpose
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HttpVllm:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Server(ThreadingHTTPServer):
    request_queue_size = 128
    """The stdlib's listen backlog is 5: a job's first burst of connections overflowed it, and a
    connection reset by the kernel failed a test that allows no retry (``--retry-deadline 0``)."""
