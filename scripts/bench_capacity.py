"""Share of a simulated vLLM server's capacity that generation uses: the engine vs the old barrier loop,
and whole jobs against an omniscient client.

    python scripts/bench_capacity.py [--seconds 60] [--sigma 0.6] [--mean 0.5] [--only steady|jobs]

The server is simulated in process (tests/fakes/sim_vllm.py): N sequence slots,
each completion a lognormal time (mean 0.5 s, sigma 0.6), FIFO queueing,
``/metrics`` with vLLM's running/waiting gauges, and aborts when a client
cancels. ``RemoteBackend`` runs with its **default settings** against it. The
baseline is the loop before the engine: each NSS batch sent as requests of 25
prompts, 4 in flight, and a barrier at every batch end. Capacity used = busy
slot-seconds / (slots x wall time); overshoot = prompts sent but not used /
prompts used. Both run on 256 and 16 slots, in one run, and the script prints
the ratios. A last line shows what a 10-record job sends.

Jobs (issue 18): on 256 and 1024 slots, jobs of 1k, 20k and 100k records (completions of about 10
valid records), the engine's job time against an omniscient client on the same simulator (same
seed): one that knows the yield and sends every prompt the job needs, plus 5 %, at t=0, one prompt
per request (nothing waits on a slower sibling), validating as it goes and stopping at the target.
At sigma 0.6 and, for heavier tails, 1.0. Goal: every cell <= 1.25x, overshoot <= 5 %. Then three
cells where a completion's records follow its length, as on a real server (the first back are the
short ones, which once made a job sized from them overshoot), and jobs of a wave or two, whose start
depends on whether the run directory bounds a completion's records (``max_sequences_per_example``).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fakes.sim_vllm import RECORD, SCHEMA, SimulatedVllm, records_text  # noqa: E402

from remote_synth import RemoteBackend, RemoteSettings
from remote_synth._transport import InferenceClient
from remote_synth._transport.types import completions_body
from remote_synth.demo.layout import write_run_dir  # noqa: E402
from remote_synth.nss import Batch, GenerationBatches, TabularDataProcessor

RECORDS_PER_PROMPT = 5  # about; the simulator writes 3..7 lines, 5 % of them invalid


@dataclass
class Outcome:
    capacity: float
    overshoot: float
    records_per_second: float
    prompts_sent: int
    prompts_used: int
    wall: float = 0.0


def run_dir(max_sequences_per_example: int | None = 10) -> Path:
    """A table's run directory; NSS saves ``max_sequences_per_example`` 10 for a table by default ("auto"),
    None where examples fill the context (then nothing bounds a completion's records)."""
    root = Path(tempfile.mkdtemp(prefix="bench-capacity-"))
    data = {"max_sequences_per_example": max_sequences_per_example}
    return write_run_dir(root / "run", SCHEMA, base_model="base", base_max_seq_length=1024, data=data)


def ours(run: Path, sim: SimulatedVllm, records: int) -> Outcome:
    settings = RemoteSettings(base_url="http://sim", adapter_name=sim.adapter)  # defaults otherwise
    with RemoteBackend(run, {"num_records": records}, settings=settings, transport=sim) as backend:
        t0, busy0 = time.monotonic(), sim.busy_seconds
        results = backend.generate()
        wall = time.monotonic() - t0
        stats = backend.engine_stats
    assert stats is not None
    used = results.num_prompts
    return Outcome(
        capacity=(sim.busy_seconds - busy0) / (sim.slots * wall),
        overshoot=(stats.prompts_sent - used) / used,
        records_per_second=results.num_valid_records / wall,
        prompts_sent=stats.prompts_sent,
        prompts_used=used,
        wall=wall,
    )


def barrier(sim: SimulatedVllm, records: int) -> Outcome:
    """The loop before the engine: NSS batches, 25 prompts per request, 4 in flight, wait for all."""

    async def loop() -> tuple[GenerationBatches, float]:
        client = InferenceClient("http://sim", transport=sim, max_concurrency=4, prompts_per_request=25)
        batches = GenerationBatches(target_num_records=records, invalid_fraction_threshold=0.8, patience=3)
        processor = TabularDataProcessor(SCHEMA)
        t0 = time.monotonic()
        while batches.num_valid_records < records and not batches.is_stopped:
            completions = await client.complete_many(sim.adapter, ["P"] * batches.get_next_num_prompts(), {})
            batch = Batch(processor)
            for i, completion in enumerate(completions):
                batch.process(i, completion.text)
            batches.add_batch(batch)
        wall = time.monotonic() - t0
        await client.aclose()
        return batches, wall

    busy0 = sim.busy_seconds
    batches, wall = asyncio.run(loop())
    return Outcome(
        capacity=(sim.busy_seconds - busy0) / (sim.slots * wall),
        overshoot=0.0,  # it sends whole batches and uses them all
        records_per_second=batches.num_valid_records / wall,
        prompts_sent=batches.num_prompts,
        prompts_used=batches.num_prompts,
    )


JOB_YIELD = 10
"""Valid records per completion in the job cells (8 to 12 lines, none invalid)."""


def job_text(rng: random.Random) -> str:
    return records_text(rng, mean_records=JOB_YIELD, invalid_share=0.0)


def sized_job_text(rng: random.Random, length: float) -> str:
    """As on a real server: a completion that ran ``length`` times the mean has about as many more
    records (0.4 + 0.6 x length, so a mean of ``JOB_YIELD``): the first back are the short ones."""
    count = max(1, round(JOB_YIELD * (0.4 + 0.6 * length)))
    return "".join(RECORD % (rng.randint(0, 9), rng.choice("xy")) for _ in range(count))


def omniscient(sim: SimulatedVllm, records: int) -> float:
    """Seconds to ``records`` valid records when every needed prompt (+5 %) goes at t=0, one per request
    (should the yield fall short, what is missing goes at once, when the last of them is back)."""

    async def job() -> float:
        client = InferenceClient("http://sim", transport=sim, max_concurrency=10**6, prompts_per_request=1)
        processor = TabularDataProcessor(SCHEMA)
        body = completions_body(sim.adapter, ["P"], {})
        t0 = time.monotonic()
        valid, tasks = 0, []
        while valid < records:
            more = math.ceil((records - valid) / JOB_YIELD * 1.05)
            tasks = [asyncio.ensure_future(client.send_completions(body)) for _ in range(more)]
            for finished in asyncio.as_completed(tasks):
                for completion in await finished:
                    valid += len(processor(0, completion.text).valid_records)
                if valid >= records:
                    break
        wall = time.monotonic() - t0
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()
        return wall

    return asyncio.run(job())


def jobs_table(run: Path, mean: float, sigmas: tuple[float, ...]) -> None:
    print(
        f"\njobs against an omniscient client (lognormal mean {mean} s, about {JOB_YIELD} valid records a completion)"
    )
    print(f"{'sigma':>5} {'slots':>5} {'records':>8} {'ours s':>7} {'omni s':>7} {'ratio':>6} {'overshoot':>9}")
    worst = 0.0
    for sigma in sigmas:
        for slots in (256, 1024):
            for records in (1_000, 20_000, 100_000):
                seed = slots * 7 + records
                new = ours(run, SimulatedVllm(slots, mean=mean, sigma=sigma, seed=seed, text=job_text), records)
                best = omniscient(SimulatedVllm(slots, mean=mean, sigma=sigma, seed=seed, text=job_text), records)
                ratio = new.wall / best
                worst = max(worst, ratio) if sigma == 0.6 else worst
                print(f"{sigma:>5} {slots:>5} {records:>8} {new.wall:>7.2f} {best:>7.2f} {ratio:>5.2f}x "
                      f"{new.overshoot:>9.2%}")  # fmt: skip
    print(f"worst at sigma 0.6: {worst:.2f}x (goal <= 1.25x)")
    print("records that follow the completion's length (sigma 0.6), as on a real server:")
    for slots, records in ((128, 2_000), (256, 2_000), (1024, 20_000)):
        seed = slots * 7 + records
        new = ours(run, SimulatedVllm(slots, mean=mean, sigma=0.6, seed=seed, sized_text=sized_job_text), records)
        best = omniscient(SimulatedVllm(slots, mean=mean, sigma=0.6, seed=seed, sized_text=sized_job_text), records)
        print(f"{'':>5} {slots:>5} {records:>8} {new.wall:>7.2f} {best:>7.2f} {new.wall / best:>5.2f}x "
              f"{new.overshoot:>9.2%}")  # fmt: skip
    print("jobs of a wave or two (sigma 0.6, seeds 1-3, mean ratio and largest overshoot), the run directory")
    print("saying 10 records a completion at most, or not:")
    bounded = {"10": run, "none": run_dir(None)}
    for slots, records in ((256, 2_000), (1024, 5_000)):
        ratios: dict[str, list[float]] = {label: [] for label in bounded}
        overshoots: dict[str, list[float]] = {label: [] for label in bounded}
        for seed in (1, 2, 3):
            best = omniscient(SimulatedVllm(slots, mean=mean, sigma=0.6, seed=seed, text=job_text), records)
            for label, directory in bounded.items():
                new = ours(directory, SimulatedVllm(slots, mean=mean, sigma=0.6, seed=seed, text=job_text), records)
                ratios[label].append(new.wall / best)
                overshoots[label].append(new.overshoot)
        for label in bounded:
            print(f"{label:>5} {slots:>5} {records:>8} {'':>7} {'':>7} {sum(ratios[label]) / len(ratios[label]):>5.2f}x "
                  f"{max(overshoots[label]):>9.2%}")  # fmt: skip


def records_for(seconds: float, slots: int, mean: float, share: float) -> int:
    """A target that keeps ``share`` of the slots busy for about ``seconds``."""
    return int(seconds * share * slots / mean * RECORDS_PER_PROMPT)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="rough length of each engine run")
    parser.add_argument("--mean", type=float, default=0.5)
    parser.add_argument("--sigma", type=float, default=0.6)
    parser.add_argument("--only", choices=["steady", "jobs"], help="one part of the benchmark")
    args = parser.parse_args()
    run = run_dir()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    if args.only != "steady":
        jobs_table(run, args.mean, (0.6, 1.0))
    if args.only == "jobs":
        return
    print(f"simulated vLLM: lognormal completions, mean {args.mean} s, sigma {args.sigma}; engine defaults")
    print(f"{'slots':>5}  {'loop':<8} {'capacity':>9} {'overshoot':>9} {'records/s':>10} {'sent':>7} {'used':>7}")
    ratios = []
    for slots in (256, 16):
        sim = SimulatedVllm(slots, mean=args.mean, sigma=args.sigma, seed=slots)
        new = ours(run, sim, records_for(args.seconds, slots, args.mean, 0.95))
        old = barrier(sim, records_for(args.seconds / 2, slots, args.mean, 0.15 if slots > 100 else 0.5))
        for name, o in (("engine", new), ("barrier", old)):
            print(f"{slots:>5}  {name:<8} {o.capacity:>9.1%} {o.overshoot:>9.2%} {o.records_per_second:>10.0f} "
                  f"{o.prompts_sent:>7} {o.prompts_used:>7}")  # fmt: skip
        ratios.append((slots, new.capacity / old.capacity, new))
    for slots, ratio, new in ratios:
        goal = " (goal >= 90 %, overshoot <= 5 %)" if slots == 256 else ""
        print(f"{slots} slots: engine uses {new.capacity:.1%} of capacity, {ratio:.1f}x the barrier loop; "
              f"overshoot {new.overshoot:.2%}{goal}")  # fmt: skip
    small = ours(run, SimulatedVllm(256, mean=args.mean, sigma=args.sigma, seed=7), 10)
    print(f"a 10-record job: {small.prompts_sent} prompts sent, {small.prompts_used} used (the barrier loop: 100)")


if __name__ == "__main__":
    main()
