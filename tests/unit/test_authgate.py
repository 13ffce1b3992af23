"""The auth gate that vLLM loads in front of every route of a server we launch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from remote_synth._server.standalone.authgate import AuthGate


def call(gate: AuthGate, path: str, key: str | None = None, kind: str = "http", root: str = "") -> tuple[Any, bool]:
    """(status or close message, whether the app behind was reached)."""
    reached = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"authorization", f"Bearer {key}".encode())] if key is not None else []
    scope = {"type": kind, "path": path, "root_path": root, "headers": headers, "method": "POST"}
    gate.app = app
    asyncio.run(gate(scope, receive, send))
    first = sent[0] if sent else None
    return (first.get("status", first.get("code")) if first else None), bool(reached)


ROUTES = ["/v1/completions", "/invocations", "/tokenize", "/detokenize", "/metrics", "/pooling", "/v2/x", "/"]


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_needs_the_key(path: str) -> None:
    gate = AuthGate(lambda *a: None, key="k")  # type: ignore[arg-type,return-value]
    assert call(gate, path) == (401, False)
    assert call(gate, path, key="wrong") == (401, False)
    assert call(gate, path, key="k") == (None, True)


def test_health_is_open_and_websockets_are_closed_without_the_key() -> None:
    gate = AuthGate(lambda *a: None, key="k")  # type: ignore[arg-type,return-value]
    assert call(gate, "/health") == (None, True)
    assert call(gate, "/v1/realtime", kind="websocket") == (1008, False)
    assert call(gate, "/api/health", root="/api") == (None, True)
    assert call(gate, "/api/metrics", root="/api") == (401, False)


def test_lifespan_passes_and_a_gate_without_a_key_refuses_to_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = AuthGate(lambda *a: None, key="k")  # type: ignore[arg-type,return-value]
    assert call(gate, "", kind="lifespan") == (None, True)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="VLLM_API_KEY"):
        AuthGate(lambda *a: None)  # type: ignore[arg-type,return-value]
    monkeypatch.setenv("VLLM_API_KEY", "from-env")
    assert call(AuthGate(lambda *a: None), "/metrics", key="from-env") == (None, True)  # type: ignore[arg-type,return-value]
