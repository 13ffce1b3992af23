"""An ASGI gate for a vLLM server we launch: every route but ``/health`` needs the key.

vLLM's own key check (``--api-key`` / ``VLLM_API_KEY``) guards only ``/v1``,
``/v2``, ``/inference`` and ``/cohere``: ``/invocations`` (SageMaker, which can
name an adapter in a header), ``/tokenize``, ``/detokenize``, ``/metrics``,
``/pooling``… stay open. vLLM loads this class with ``--middleware`` as the
outermost layer, so it sees every HTTP and WebSocket request first.

It imports nothing but the standard library, because it runs inside the
server's interpreter: the server supervisor copies this file next to the
server as ``remote_synth_authgate.py`` and puts it on ``PYTHONPATH``. The key is
read from ``VLLM_API_KEY``, where the supervisor already puts it.
"""

import hashlib
import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health"})
KEY_VARIABLE = "VLLM_API_KEY"


class AuthGate:
    """Refuses (401) any request without ``Authorization: Bearer <key>``, except ``/health``."""

    def __init__(self, app: ASGIApp, key: "str | None" = None) -> None:
        self.app = app
        secret = key if key is not None else os.environ.get(KEY_VARIABLE, "")
        if not secret:
            raise RuntimeError(f"the auth gate needs a key in {KEY_VARIABLE}")
        self._digest = hashlib.sha256(secret.encode()).digest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._admits(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": {"message": "Unauthorized: send the server's API key", "code": 401}}).encode()
        headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _admits(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path in OPEN_PATHS:
            return True
        return hmac.compare_digest(hashlib.sha256(_bearer(scope).encode()).digest(), self._digest)


def _bearer(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""
