"""What the journal costs: using completions with it and without it, side by side, and replaying it.

    python scripts/bench_journal.py [--requests 4000]

The same stream of simulated completions (25 per request, about 5 records each, a few invalid) goes
through NSS's accounting twice: without a journal, and with one (each request's texts appended to
the file, fsync'd at every batch end). Then the journal is read back and replayed, as ``--resume``
does. Prints records/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from fakes.sim_vllm import SCHEMA, records_text  # noqa: E402

from remote_synth._engine import Job, TabularJobs  # noqa: E402
from remote_synth._io import Journal  # noqa: E402
from remote_synth._transport.types import Completion  # noqa: E402
from remote_synth.nss import GenerationBatches
from remote_synth.nss.processors import TabularDataProcessor  # noqa: E402

TARGET = 10**9


def jobs(log: Journal | None) -> TabularJobs:
    batches = GenerationBatches(target_num_records=TARGET, invalid_fraction_threshold=0.8, patience=3)
    return TabularJobs(batches, TabularDataProcessor(SCHEMA, detailed_errors=False), "P", {}, TARGET, log=log)


def use(stream: list[list[str]], log: Journal | None) -> tuple[float, int]:
    source = jobs(log)
    started = time.perf_counter()
    for texts in stream:
        source.complete(Job(prompts=["P"] * len(texts), params={}), [Completion(t) for t in texts])
    source.flush()
    return time.perf_counter() - started, source.batches.num_valid_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()
    rng = random.Random(0)
    stream = [[records_text(rng) for _ in range(25)] for _ in range(args.requests)]
    path = Path(tempfile.mkdtemp()) / "bench.csv.journal"

    plain, records = use(stream, None)
    journal = Journal(path, {"bench": 1})
    journal.open(resume=False)
    journaled, _ = use(stream, journal)
    journal.close()
    started = time.perf_counter()
    entries = Journal(path, {"bench": 1}).open(resume=True)
    replay_source = jobs(None)
    replay_source.replay(entries)
    replay_source.flush()
    replayed = time.perf_counter() - started
    assert replay_source.batches.num_valid_records == records

    print(f"{args.requests * 25:,} completions, {records:,} records, journal {path.stat().st_size / 1e6:.1f} MB")
    print(f"without journal: {records / plain:,.0f} records/s")
    print(f"with journal:    {records / journaled:,.0f} records/s  (the time: {journaled / plain:.2f}x)")
    print(f"resume (read + replay): {records / replayed:,.0f} records/s")
    path.unlink()


if __name__ == "__main__":
    main()
