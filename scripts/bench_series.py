"""Time series on a simulated vLLM: groups that run on their own (the engine) against NSS's rounds.

    python scripts/bench_series.py [--groups 40] [--hours 48] [--mean 0.5] [--sigma 0.6]

NSS's TimeseriesBackend generates in rounds: one call with every active group's prompt (``n``
samples each), then it waits for all of them before the next round, so every round lasts as long
as its slowest sequence. ``TimeseriesJobs`` sends a group's next request as soon as its last one is
back. Both runs use the same job source (same groups, prompts, samples, checks, stopping), against
the same simulated server (tests/fakes/sim_vllm.py: sequence slots, lognormal completion times),
whose completions continue their prompt's last record by 3 to 5 hours, now and then with an
invalid line. It prints records/s and the share of the server's slots used, for both, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fakes.sim_vllm import SimulatedVllm  # noqa: E402

from remote_synth import RemoteBackend, RemoteSettings  # noqa: E402
from remote_synth._engine.series import SeriesKind  # noqa: E402
from remote_synth._transport import InferenceClient
from remote_synth._transport.preflight import check_server  # noqa: E402
from remote_synth.demo.layout import write_run_dir  # noqa: E402
from remote_synth.nss import GenerationBatches

FMT = "%Y-%m-%d %H:%M"
START = datetime(2026, 1, 1)


def run_dir(groups: int, hours: int) -> Path:
    names = [f"g{i}" for i in range(groups)]
    schema = {
        "type": "object",
        "required": ["device", "time", "v"],
        "properties": {
            "device": {"enum": names},
            "time": {"type": "string"},
            "v": {"type": "integer", "minimum": 0, "maximum": 99},
        },
    }
    series = {
        "timestamp_column": "time",
        "timestamp_format": FMT,
        "timestamp_interval_seconds": 3600,
        "start_timestamp": str(START),
        "stop_timestamp": str(START + timedelta(hours=hours + 2)),
    }
    prefill = {
        g: "".join(
            json.dumps({"device": g, "time": (START + timedelta(hours=h)).strftime(FMT), "v": 1}) + "\n"
            for h in range(3)
        )
        for g in names
    }
    root = Path(tempfile.mkdtemp(prefix="bench-series-"))
    return write_run_dir(root / "run", schema, base_model="base", base_max_seq_length=1024, time_series=series,
                         data={"group_training_examples_by": "device"}, initial_prefill=prefill,
                         generation={"num_records": groups * hours})  # fmt: skip


def continuation(rng: random.Random, prompt: str) -> str:
    last = json.loads(prompt.rstrip("\n").rsplit("\n", 1)[-1].split("[/INST]")[-1])
    at = datetime.strptime(last["time"], FMT)
    lines = [json.dumps({"device": last["device"], "time": (at + timedelta(hours=i)).strftime(FMT),
                         "v": rng.randint(0, 99)}) + "\n" for i in range(1, rng.randint(3, 5) + 1)]  # fmt: skip
    if rng.random() < 0.05:
        lines.append('{"device": "' + last["device"] + '", "time": "soon", "v": 1}\n')
    return "".join(lines)


def ours(run: Path, sim: SimulatedVllm) -> tuple[float, float, int]:
    settings = RemoteSettings(base_url="http://sim", adapter_name=sim.adapter)
    with RemoteBackend(run, settings=settings, transport=sim) as backend:
        t0, busy0 = time.monotonic(), sim.busy_seconds
        results = backend.generate()
        wall = time.monotonic() - t0
    return results.num_valid_records / wall, (sim.busy_seconds - busy0) / (sim.slots * wall), len(results.df)


def rounds(run: Path, sim: SimulatedVllm) -> tuple[float, float, int]:
    """NSS's loop: every active group's job at once, then wait for all of them."""
    settings = RemoteSettings(base_url="http://sim", adapter_name=sim.adapter)
    backend = RemoteBackend(run, settings=settings, transport=sim)
    assert isinstance(backend.kind, SeriesKind)

    async def loop() -> tuple[GenerationBatches, float]:
        client = InferenceClient("http://sim", transport=sim, max_concurrency=1024)
        info = await check_server(client, sim.adapter, backend.prompt, None)
        batches = GenerationBatches(target_num_records=backend.config.num_records)
        jobs = backend.kind.jobs(batches, backend._request_body(info), on_batch=None, log=None)
        t0 = time.monotonic()
        while not jobs.done:
            round_jobs = []
            while jobs.demand(0) > 0:
                round_jobs.append(jobs.next_job(10**6))
            answers = await asyncio.gather(*(client.complete_many(sim.adapter, j.prompts, dict(j.params))
                                             for j in round_jobs))  # fmt: skip
            for job, completions in zip(round_jobs, answers, strict=True):
                jobs.complete(job, completions)
        jobs.flush()
        wall = time.monotonic() - t0
        await client.aclose()
        return batches, wall

    busy0 = sim.busy_seconds
    batches, wall = asyncio.run(loop())
    return batches.num_valid_records / wall, (sim.busy_seconds - busy0) / (sim.slots * wall), batches.num_valid_records


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--groups", type=int, default=40)
    parser.add_argument("--hours", type=int, default=48)
    parser.add_argument("--mean", type=float, default=0.5)
    parser.add_argument("--sigma", type=float, default=0.6)
    args = parser.parse_args()
    run = run_dir(args.groups, args.hours)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{args.groups} groups x {args.hours} hours; simulated vLLM: lognormal completions, mean {args.mean} s, "
          f"sigma {args.sigma}")  # fmt: skip
    print(f"{'slots':>5}  {'loop':<7} {'records/s':>9} {'capacity':>9} {'records':>8}")
    for slots in (256, 64):
        new = ours(run, SimulatedVllm(slots, mean=args.mean, sigma=args.sigma, seed=1, continuation=continuation))
        old = rounds(run, SimulatedVllm(slots, mean=args.mean, sigma=args.sigma, seed=1, continuation=continuation))
        for name, (rate, capacity, count) in (("engine", new), ("rounds", old)):
            print(f"{slots:>5}  {name:<7} {rate:>9.0f} {capacity:>9.1%} {count:>8}")
        print(f"{slots} slots: the engine {new[0] / old[0]:.2f}x NSS's rounds in records/s")


if __name__ == "__main__":
    main()
