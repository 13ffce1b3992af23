"""N tenants sharing one server against the same jobs one at a time: throughput and fairness.

    python scripts/bench_tenants.py [--tenants 4] [--slots 128] [--records 20000]

The server is the simulated vLLM of tests/fakes/sim_vllm.py (``--slots`` sequence slots,
lognormal completions with mean 0.5 s, ``/metrics``). Each tenant is the generation engine
(scheduler, window policy, NSS accounting) with default settings and its own connection pool,
asking for ``--records`` records. Concurrently, all tenants start together; one at a time,
they run back to back. The script prints total records/s of both and their ratio, and the
fairness of the concurrent run: the largest tenant's records/s over the smallest's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fakes.sim_vllm import SCHEMA, SimulatedVllm  # noqa: E402

from remote_synth._engine import Scheduler, TabularJobs, WindowPolicy, WindowSettings  # noqa: E402
from remote_synth._transport import InferenceClient  # noqa: E402
from remote_synth.nss import GenerationBatches, TabularDataProcessor


async def tenant(sim: SimulatedVllm, records: int) -> tuple[int, float]:
    """One job to its target; (valid records, seconds)."""
    client = InferenceClient("http://sim", transport=sim)
    batches = GenerationBatches(target_num_records=records, invalid_fraction_threshold=0.8, patience=3)
    jobs = TabularJobs(batches, TabularDataProcessor(SCHEMA, detailed_errors=False), "P", {}, records)
    scheduler = Scheduler(client, sim.adapter, WindowPolicy(WindowSettings()))
    started = time.monotonic()
    await scheduler.run(jobs)
    jobs.flush()
    elapsed = time.monotonic() - started
    await client.aclose()
    return batches.num_valid_records, elapsed


async def concurrently(sim: SimulatedVllm, tenants: int, records: int) -> tuple[float, list[float]]:
    started = time.monotonic()
    results = await asyncio.gather(*(tenant(sim, records) for _ in range(tenants)))
    wall = time.monotonic() - started
    return sum(n for n, _ in results) / wall, [n / t for n, t in results]


async def one_at_a_time(sim: SimulatedVllm, tenants: int, records: int) -> float:
    started = time.monotonic()
    total = 0
    for _ in range(tenants):
        total += (await tenant(sim, records))[0]
    return total / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--slots", type=int, default=128)
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"simulated vLLM: {args.slots} slots; {args.tenants} tenants of {args.records} records each")
    together, rates = asyncio.run(concurrently(SimulatedVllm(args.slots, seed=1), args.tenants, args.records))
    alone = asyncio.run(one_at_a_time(SimulatedVllm(args.slots, seed=2), args.tenants, args.records))
    print(f"concurrent:      {together:,.0f} records/s in all; per tenant {', '.join(f'{r:,.0f}' for r in rates)}")
    print(f"one at a time:   {alone:,.0f} records/s in all")
    print(f"concurrent / one at a time: {together / alone:.2f}x; fairness (largest / smallest): "
          f"{max(rates) / min(rates):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
