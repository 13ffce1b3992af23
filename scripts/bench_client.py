"""The client's own cost: valid records/s of the whole engine against an instant in-process server.

    python scripts/bench_client.py [--sizes 10000 100000 1000000]

``RemoteBackend.generate()`` with default settings, end to end (scheduler, HTTP
transport, JSON, validation, NSS batch accounting, the final DataFrame), against
a simulated vLLM whose completions take no time: every second spent is the
client's. Completions carry 10 lines of bench_processor's 10-column table
(~80 % valid). Goals: >= 50,000 records/s, and the time per record at the largest
size within 1.25x of the smallest (nothing grows with the job).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_processor import SCHEMA, make_completions  # noqa: E402
from fakes.sim_vllm import SimulatedVllm  # noqa: E402

from remote_synth import RemoteBackend, RemoteSettings  # noqa: E402
from remote_synth.demo.layout import write_run_dir  # noqa: E402


def rate(run: Path, sim: SimulatedVllm, records: int) -> tuple[float, int]:
    settings = RemoteSettings(base_url="http://sim", adapter_name=sim.adapter)
    gc.collect()
    with RemoteBackend(run, {"num_records": records}, settings=settings, transport=sim) as backend:
        started = time.perf_counter()
        results = backend.generate()
        elapsed = time.perf_counter() - started
    assert len(results.df) == records
    return results.num_valid_records / elapsed, results.num_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    texts = make_completions(2000, seed=11)
    picker = iter(range(10**12))
    sim = SimulatedVllm(4096, mean=0.0, sigma=0.0, text=lambda rng: texts[next(picker) % len(texts)])
    run = write_run_dir(Path(tempfile.mkdtemp()) / "run", SCHEMA, base_model="base", base_max_seq_length=4096)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    results = []
    for size in args.sizes:
        per_second, prompts = rate(run, sim, size)
        results.append((size, per_second))
        print(f"{size:>9} records: {per_second:>9,.0f} valid records/s ({prompts} completions)")
    (small, small_rate), (large, large_rate) = results[0], results[-1]
    print(f"slowest rate: {min(r for _, r in results):,.0f} records/s (goal >= 50,000)")
    print(f"time per record at {large:,} / at {small:,}: {small_rate / large_rate:.2f}x (goal <= 1.25x)")


if __name__ == "__main__":
    main()
