"""A fault-injecting HTTP proxy, for putting a real vLLM server through a bad few minutes.

It forwards each request to ``upstream`` (one request per connection, ``Connection:
close``), unless ``plan(n, method, path)`` names a fault for the ``n``-th request:

- ``("status", code, retry_after)``: answer that status itself (JSON body; Retry-After if given);
- ``("reset",)``: drop the connection without an answer;
- ``("truncate",)``: forward, then send only half of the answer's body and drop the connection;
- ``("slow", seconds)``: forward, then hold the answer back for ``seconds``;
- ``("html", code)``: answer with an HTML error page, as a gateway would;
- ``("swap", model)``: forward with the body's ``model`` replaced, as a gateway serving another
  version (or the base model) under the name asked for.

``outage(seconds)`` closes the listening socket (connections are refused) and opens it
again on the same port afterwards; ``stall(seconds)`` holds the proxy's event loop. Runs its own
event loop on a thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx

Fault = tuple[object, ...]
Plan = Callable[[int, str, str], Fault | None]


class FaultProxy:
    def __init__(self, upstream: str, plan: Plan) -> None:
        self.upstream = upstream.rstrip("/")
        self.plan = plan
        self.port = 0
        self.requests = 0
        self.faults: Counter[str] = Counter()
        self.outages: list[tuple[float, float]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._http: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()  # not left to the collector (its finalizer can run mid-compile: a CPython 3.11 bug)

    def outage(self, seconds: float) -> None:
        """Refuse connections for ``seconds`` (from another thread; returns at once)."""
        asyncio.run_coroutine_threadsafe(self._outage(seconds), self._loop)

    def stall(self, seconds: float) -> None:
        """Hold the proxy's event loop for ``seconds``, as a stalled server (from another thread;
        returns at once): new connections wait, accepted by the kernel, in the listener's backlog."""
        self._loop.call_soon_threadsafe(time.sleep, seconds)

    async def _open(self) -> None:
        self._http = httpx.AsyncClient(base_url=self.upstream, timeout=900)
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        """Stop listening, then end the connections still open (a client killed mid-request leaves
        its handler waiting): left to the collector once the loop is closed, they would warn.

        Rounds repeat until none of our tasks (handlers, an outage) is left: a handler can start
        after the first round's cancellations. The tasks httpx starts end with the handler that
        started them."""
        await self._stop_listening()
        while True:
            await asyncio.sleep(0)
            pending = [task for task in self._tasks if not task.done()]
            if not pending:
                break
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
        await asyncio.sleep(0)  # the closed transports' connection_lost callbacks

    async def _outage(self, seconds: float) -> None:
        assert self._server is not None
        self._own_task()
        started = time.monotonic()
        await self._stop_listening()
        await asyncio.sleep(seconds)
        await self._listen()
        self.outages.append((started, time.monotonic()))

    async def _stop_listening(self) -> None:
        """Stop accepting, let the connections accepted already reach their handlers, then close.

        A connection is accepted in one turn of the loop and given its transport in a later one;
        on Python 3.11 a transport made after ``Server.close()`` fails (``Server._attach`` asserts
        the server is open) and its socket is dropped unclosed. So the listener leaves the loop's
        selector first, and the server closes once those turns have run."""
        if self._server is None:
            return
        loop = asyncio.get_running_loop()
        for sock in self._server.sockets:
            loop.remove_reader(sock.fileno())
        for _ in range(3):  # accept → transport → connection_made → the handler's first step
            await asyncio.sleep(0)
        self._server.close()

    def _own_task(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._own_task()
        try:
            method, path, headers, body = await _read_request(reader)
            self.requests += 1
            fault = self.plan(self.requests, method, path)
            await self._answer(writer, fault, method, path, headers, body)
        except (asyncio.IncompleteReadError, ValueError, ConnectionError, httpx.HTTPError):
            pass
        except asyncio.CancelledError:
            pass  # by _close; the task is the connection's own and nothing awaits it (asyncio would log it)
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, fault: Fault | None, method: str, path: str,
                      headers: dict[str, str], body: bytes) -> None:  # fmt: skip
        kind = str(fault[0]) if fault else "pass"
        self.faults[kind] += 1
        if kind == "reset":
            writer.transport.abort()
            return
        if kind == "status":
            code, retry_after = int(fault[1]), fault[2]  # type: ignore[index,call-overload]
            extra = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            payload = json.dumps({"error": {"message": f"injected {code}", "code": code}}).encode()
            await _write(writer, code, payload, "application/json", extra)
            return
        if kind == "html":
            page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502</h1>" + b"x" * 2000 + b"</body>"
            await _write(writer, int(fault[1]), page, "text/html")  # type: ignore[index,call-overload]
            return
        assert self._http is not None
        forwarded = {k: v for k, v in headers.items() if k in ("authorization", "content-type")}
        if kind == "swap":  # a gateway that serves another model under the name asked for
            body = json.dumps({**json.loads(body), "model": fault[1]}).encode()
        response = await self._http.request(method, path, content=body, headers=forwarded)
        content = response.content
        if kind == "slow":
            await asyncio.sleep(float(fault[1]))  # type: ignore[index,arg-type]
        if kind == "truncate":
            head = _head(response.status_code, len(content), response.headers.get("content-type", ""), {})
            writer.write(head + content[: len(content) // 2])
            await writer.drain()
            writer.transport.abort()
            return
        await _write(writer, response.status_code, content, response.headers.get("content-type", "text/plain"))


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    request_line, *lines = head.split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {}
    for line in lines:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, path, headers, body


def _head(status: int, length: int, content_type: str, extra: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}", f"Content-Length: {length}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _write(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str,
                 extra: dict[str, str] | None = None) -> None:  # fmt: skip
    writer.write(_head(status, len(body), content_type, extra or {}) + body)
    await writer.drain()
