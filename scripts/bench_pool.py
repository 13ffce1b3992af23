"""Client CPU per request: connections in lanes (ours) against one httpcore pool, side by side.

    python scripts/bench_pool.py [--in-flight 32 256 1024] [--requests 3000]

A server in another process answers every ``/v1/completions`` after 20 ms over keep-alive
connections (an instant vLLM: every CPU second measured is the client's). For each number of
requests in flight, ``InferenceClient.complete`` runs the same requests twice, interleaved: with
its default connections (``lanes.py``: lanes of 16) and with one pool of as many connections (what
it had before, httpx's ``AsyncHTTPTransport``). Prints requests/s and the client's CPU per request
(this process's user + system time), and the ratio of the two.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import platform
import resource
import socket
import time

import httpx

from remote_synth._transport import InferenceClient

ANSWER = b'{"model":"m","choices":[{"index":0,"text":"x","finish_reason":"stop"}]}'
LATENCY = 0.02


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
            await reader.readexactly(length)
            await asyncio.sleep(LATENCY)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(ANSWER), ANSWER))  # fmt: skip
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def serve(listener: socket.socket) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_answer, sock=listener, backlog=4096)
        await server.serve_forever()

    asyncio.run(main())


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(url: str, in_flight: int, requests: int, lanes: bool) -> tuple[float, float]:
    transport = None if lanes else httpx.AsyncHTTPTransport(limits=InferenceClient._limits(in_flight))
    client = InferenceClient(url, max_concurrency=in_flight, transport=transport)
    body = {"model": "m", "prompt": ["P"], "n": 1}
    try:
        await asyncio.gather(*(client.complete(body) for _ in range(min(requests, 2 * in_flight))))  # connect
        cpu0, t0 = cpu(), time.monotonic()
        await asyncio.gather(*(client.complete(body) for _ in range(requests)))
        wall, used = time.monotonic() - t0, cpu() - cpu0
    finally:
        await client.aclose()
    return requests / wall, used / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--in-flight", type=int, nargs="+", default=[32, 256, 1024])
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    logging.getLogger("remote_synth").setLevel(logging.ERROR)  # a connect that times out (1,024 at once) is retried
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    server = multiprocessing.Process(target=serve, args=(listener,), daemon=True)
    server.start()
    try:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
              f"server answers after {LATENCY * 1000:.0f} ms")  # fmt: skip
        print(f"{'in flight':>9} {'way':>10} {'requests/s':>11} {'CPU µs/request':>15}")
        for in_flight in args.in_flight:
            results = {}
            for lanes in (True, False):
                results[lanes] = asyncio.run(measure(url, in_flight, args.requests, lanes))
                rate, per = results[lanes]
                print(f"{in_flight:>9} {'lanes' if lanes else 'one pool':>10} {rate:>11.0f} {per * 1e6:>15.0f}")
            print(f"{in_flight:>9} {'ratio':>10} {results[True][0] / results[False][0]:>10.2f}x "
                  f"{results[False][1] / results[True][1]:>14.2f}x less CPU per request with lanes")  # fmt: skip
    finally:
        server.terminate()
        server.join(5)


if __name__ == "__main__":
    main()
