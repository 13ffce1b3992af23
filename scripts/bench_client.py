"""The client's own cost: valid records/s of the whole engine against an instant in-process server.

    python scripts/bench_client.py [--sizes 10000 100000 1000000]

``RemoteBackend.generate()`` with default settings, end to end (scheduler, HTTP
transport, JSON, validation, NSS batch accounting, the final DataFrame), against
an in-process server that answers at once from canned completions: every second
spent is the client's. Two tables: bench_processor's 10-column one (10 lines per
completion, ~80 % valid) and the simulator's 2-column one (~5 lines, ~95 % valid).
Goals (issue 18): >= 50,000 records/s at the largest size (1M), and the time per
record there within 1.25x of the smallest (nothing grows with the job). Small jobs
run slower per record: near the end a request carries few prompts (TAIL_JOBS), and
a request costs the client about as much as a dozen records.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
from bench_processor import SCHEMA, make_completions  # noqa: E402
from fakes.sim_vllm import SCHEMA as NARROW_SCHEMA  # noqa: E402
from fakes.sim_vllm import records_text  # noqa: E402

from remote_synth import RemoteBackend, RemoteSettings  # noqa: E402
from remote_synth.demo.layout import write_run_dir  # noqa: E402


class InstantServer(httpx.AsyncBaseTransport):
    """Answers at once, from canned completions, like a vLLM with infinite speed (and no /metrics)."""

    adapter = "nss-adapter"

    def __init__(self, texts: list[str]) -> None:
        # Each choice is encoded once: a real server encodes its answers in its own process, so
        # encoding them here for every request would charge the client for the server's work.
        self._choices = [json.dumps(t) for t in texts]
        self._next = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/models":
            data = [{"id": "base", "max_model_len": 4096}, {"id": self.adapter, "parent": "base"}]
            return httpx.Response(200, json={"data": data})
        if path == "/tokenize":
            return httpx.Response(200, json={"count": 20})
        if path != "/v1/completions":
            return httpx.Response(404)
        count = len(json.loads(await request.aread())["prompt"])
        first, self._next = self._next, self._next + count
        choices = self._choices
        picked = (choices[i % len(choices)] for i in range(first, first + count))
        body = '{"choices":[' + ",".join(f'{{"index":{i},"text":{t}}}' for i, t in enumerate(picked)) + "]}"
        return httpx.Response(200, content=body.encode(), headers={"content-type": "application/json"})


def rate(run: Path, sim: InstantServer, records: int) -> tuple[float, int]:
    settings = RemoteSettings(base_url="http://sim", adapter_name=sim.adapter)
    gc.collect()
    with RemoteBackend(run, {"num_records": records}, settings=settings, transport=sim) as backend:
        started = time.perf_counter()
        results = backend.generate()
        elapsed = time.perf_counter() - started
    assert len(results.df) == records
    return results.num_valid_records / elapsed, results.num_prompts


def tables() -> dict[str, tuple[dict, list[str]]]:
    """The wide table of bench_processor, and a narrow one (two columns, 3-7 lines, 5 % invalid)."""
    rng = random.Random(5)
    return {
        "10 columns, 10 lines/completion, ~80 % valid": (SCHEMA, make_completions(2000, seed=11)),
        "2 columns, ~5 lines/completion, ~95 % valid": (NARROW_SCHEMA, [records_text(rng) for _ in range(400)]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    for name, (schema, texts) in tables().items():
        print(name)
        run = write_run_dir(Path(tempfile.mkdtemp()) / "run", schema, base_model="base", base_max_seq_length=4096)
        results = []
        for size in args.sizes:
            per_second, prompts = rate(run, InstantServer(texts), size)
            results.append((size, per_second))
            print(f"  {size:>9} records: {per_second:>9,.0f} valid records/s ({prompts} completions)")
        (small, small_rate), (large, large_rate) = results[0], results[-1]
        print(f"  at {large:,}: {large_rate:,.0f} records/s (goal >= 50,000; slowest size {min(r for _, r in results):,.0f});"
              f" time per record at {large:,} / at {small:,}: {small_rate / large_rate:.2f}x (goal <= 1.25x)")  # fmt: skip


if __name__ == "__main__":
    main()
