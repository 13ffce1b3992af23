"""``RemoteBackend``: NSS's generation contract against a vLLM OpenAI-compatible server.

A facade: it reads the NSS run directory, reaches a running server
(``base_url``) or launches and owns one (``_server``), checks it (``_transport.preflight``),
and hands generation to the engine (``_engine``): a scheduler that keeps the
server full, and the run kind's accounting over the completions it brings back.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from ._engine import (
    EngineStats,
    Jobs,
    LoopThread,
    Progress,
    RunKind,
    Scheduler,
    request_body,
    run_kind,
    sampling_fields,
)
from ._exceptions import BackendStateError
from ._io.journal import Journal, JournalEntry, job_header
from ._server.launch import adapter_name_for, launch_settings
from ._server.supervisor import run_supervised
from ._server.vllm import ServerSettings, VllmServer
from ._settings import RemoteSettings
from ._transport.adapters import register_adapter, unregister_adapter
from ._transport.client import InferenceClient
from ._transport.preflight import check_server, wait_for_server
from ._transport.tracing import Tracing
from ._transport.types import ServerInfo
from ._wiring import client_for, scheduler_for, tenant_fields
from .nss.contract import GeneratorBackend
from .nss.inputs import generation_parameters, metadata_for, run_directory
from .nss.params import GenerateParameters
from .nss.processors import Processor
from .nss.results import DataActionsFn, GenerateJobResults, GenerationBatches
from .nss.rundir import ModelMetadata, RunDirectory
from .nss.upstream import as_nss_results, is_nss_object, register_as_nss_backend

__all__ = ["RemoteBackend"]

logger = logging.getLogger("remote_synth.remote")


class RemoteBackend(GeneratorBackend):
    """Generate through a vLLM server that serves the run's LoRA adapter.

    ```python
    with RemoteBackend("runs/cfg---data/2026-01-01", settings=RemoteSettings(base_url="http://gpu:8000")) as b:
        b.prepare_params(temperature=0.7)
        results = b.generate()            # NSS's GenerateJobResults
    ```
    Without ``base_url`` a local server is launched on ``initialize()`` and stopped on ``teardown()``.
    """

    remote = True

    def __init__(
        self,
        workdir: str | Path | RunDirectory | Any,
        config: GenerateParameters | Mapping[str, Any] | Any | None = None,
        model_metadata: ModelMetadata | Any | None = None,
        *,
        settings: RemoteSettings | None = None,
        use_detailed_logs: bool | None = None,
        on_batch: Callable[[Progress], None] | None = None,
        on_status: Callable[[str], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.transport = transport  # a test seam: a fake transport instead of the network
        self.speaks_nss = any(is_nss_object(x) for x in (workdir, config, model_metadata))
        """Built from NSS's own objects (its pipeline): an NSS ``GeneratorBackend``, NSS's results."""
        if self.speaks_nss:
            register_as_nss_backend(type(self))
        self.run = run_directory(workdir).check()
        self.workdir = self.run.path
        self.settings = settings if settings is not None else RemoteSettings.load()
        self.config = generation_parameters(config, self.run)
        self.model_metadata = metadata_for(model_metadata, self.run)
        self.use_detailed_logs = self.settings.use_detailed_logs if use_detailed_logs is None else use_detailed_logs
        self.on_batch = on_batch
        self.on_status = on_status
        """Told what ``initialize()`` waits for ("starting vLLM… 35 s"), about every second."""
        self._own_name = self.settings.adapter_name or adapter_name_for(self.run)
        """The adapter's name as given or derived; ``adapter_name`` is what requests call it (Ray
        Serve LLM's ``<base>:<adapter>``), settled by ``initialize()``."""
        self.adapter_name = self._own_name
        self.kind: RunKind = run_kind(self.run, self.model_metadata, self.config,
                                      detailed_errors=self.use_detailed_logs)  # fmt: skip
        """Tabular (grouped included) or time series: everything that differs between them."""
        self.server: VllmServer | None = None
        self.server_info: ServerInfo | None = None
        self.engine_stats: EngineStats | None = None
        """What the last ``generate()`` sent: requests, prompts sent, retries, window readings."""
        self.scheduler: Scheduler | None = None
        """The engine of the running (or last) ``generate()``: its window and what is in flight."""
        self.journal: Journal | None = None
        """Where ``generate()`` keeps the completions it uses (``open_journal``), if anywhere."""
        self._replay: list[JournalEntry] = []
        self.artifacts: dict[str, str] = {}
        """Files the last ``generate()`` leaves beside its output, by name: NSS 0.1.16's flexible time
        series' audit (raw completions, per-group metrics, rows with their index and marker)."""
        self._loaded_adapter = False
        """Whether this backend registered its adapter on the server (and so unloads it)."""
        self._client: InferenceClient | None = None
        self.tracing = Tracing()
        """Spans for the job, its batches and requests (``_transport/tracing.py``); none by default."""
        self._loop: LoopThread | None = None
        self._params: dict[str, Any] | None = None
        self._torn_down = False

    # -- lifecycle -------------------------------------------------------------------------

    def initialize(self) -> None:
        """Reach (or launch) the server and check it can serve this job."""
        if self._client is not None:  # initialized twice: release the first round first
            self.teardown()
        self._torn_down = False
        try:
            self._loop = LoopThread()
            self.adapter_name = self._own_name  # before the server's list is read
            self.tracing = Tracing.from_environment()
            base_url, api_key = self._server_address()
            self._client = client_for(self.settings, base_url, api_key, self.adapter_name, self.transport)
            self._client.tracing = self.tracing
            lazy = self.settings.adapter_check == "lazy"
            if self.settings.wait_for_server > 0:
                self._loop.run(self._wait_for_server(self._client, health_only=lazy or self.settings.load_adapter))
            if self.settings.load_adapter:
                self._loop.run(self._register_adapter(self._client))
            self.server_info = self._loop.run(
                check_server(
                    self._client,
                    self.adapter_name,
                    self.prompt,
                    self.kind.structured_choices,
                    lazy=lazy,
                    max_tokens=self.model_metadata.max_tokens_for(0, self.config.max_tokens_multiplier),
                    naming=self.settings.adapter_naming if self.server is None else "plain",
                    base=self.settings.base_model,
                )
            )
            self.adapter_name = self.server_info.model or self.adapter_name
            self.gen_method = self.generate
        except BaseException:
            self.teardown()
            raise

    def prepare_params(self, **kwargs: Any) -> None:
        """Sampling parameters under NSS's names; ``generate()`` uses exactly these (see ``sampling_fields``)."""
        self._params = sampling_fields(kwargs, self.config)

    def open_journal(self, path: str | Path, *, resume: bool = False) -> int:
        """Keep the completions ``generate()`` uses in a journal at ``path``; returns those replayed.

        With ``resume`` an existing journal must be this job's (same adapter, schema, prompt and
        settings, else ``JournalMismatchError`` naming the field), and ``generate()`` first
        replays it: the job continues where it stopped, nothing lost and nothing counted twice.
        Call after ``initialize()`` and ``prepare_params()``.
        """
        if self.server_info is None:
            raise BackendStateError("call initialize() (and prepare_params()) before open_journal()")
        journal = Journal(path, self.job_header())
        self._replay = journal.open(resume=resume)
        self.journal = journal
        return sum(len(entry.texts) - self.kind.journal_keys for entry in self._replay)

    def job_header(self) -> dict[str, object]:
        """What makes two runs the same job: adapter, schema, prompt, settings and the request's sampling."""
        assert self.server_info is not None
        body = self._sampling_body(self.server_info)  # tenant fields (priority…) may change on resume
        return job_header(self.adapter_name, self.run.schema, self.prompt, self.config.model_dump(mode="json"), body)

    def generate(self, data_actions_fn: DataActionsFn | None = None) -> GenerateJobResults:
        """NSS's batches and stop rules, over requests that keep the server full until the target."""
        if self._client is None or self._loop is None or self.server_info is None or self._torn_down:
            raise BackendStateError("call initialize() before generate() (and not after teardown())")
        batches = GenerationBatches(
            target_num_records=self.config.num_records,
            invalid_fraction_threshold=self.config.invalid_fraction_threshold,
            patience=self.config.patience,
            data_actions_fn=data_actions_fn,
        )
        client, adapter = self._client, self.adapter_name
        on_batch = self._traced(self.on_batch)
        jobs = self.kind.jobs(batches, self._request_body(self.server_info), on_batch=on_batch, log=self.journal,
                              tokenize=lambda text: client.tokenize(adapter, text))  # fmt: skip
        scheduler = self._scheduler(self._client)
        self.scheduler, self.engine_stats = scheduler, scheduler.stats  # live, for observers (--metrics-port)
        started = time.monotonic()
        self.gen_results = None
        job = {"gen_ai.request.model": adapter, "remote_synth.num_records": self.config.num_records}
        with self.tracing.job("remote_synth.generate", job):
            try:
                replay, self._replay = self._replay, []
                jobs.replay(replay)
                self._loop.run(self._run_engine(scheduler, jobs))
            finally:  # also on failure or Ctrl-C: what came back is counted and kept
                self.engine_stats = scheduler.stats
                try:
                    jobs.flush()  # runs the progress callback: a second Ctrl-C may land in it
                finally:
                    self.elapsed_time = time.monotonic() - started
                    results = self.kind.finish(batches, done=jobs.done, elapsed=self.elapsed_time)
                    self.artifacts = jobs.artifacts()
                    self.gen_results = as_nss_results(results) if self.speaks_nss else results
        batches.raise_for_status()
        return results

    def _traced(self, on_batch: Callable[[Progress], None] | None) -> Callable[[Progress], None] | None:
        """``on_batch``, after a span for the logical batch that just closed (when tracing is on)."""
        if not self.tracing.enabled:
            return on_batch
        opened = [time.time()]

        def traced(progress: Progress) -> None:
            counts = {"remote_synth.batch": progress.batch, "remote_synth.valid_records": progress.valid,
                      "remote_synth.invalid_records": progress.invalid, "remote_synth.prompts": progress.prompts}  # fmt: skip
            self.tracing.batch("remote_synth.batch", opened[0], counts)
            opened[0] = time.time()
            if on_batch is not None:
                on_batch(progress)

        return traced

    def teardown(self) -> None:
        """Cancel in-flight requests, close the pool, stop our server; idempotent, steps isolated."""
        if self._torn_down:
            return
        self._torn_down = True
        steps: list[tuple[str, Callable[[], Any]]] = []
        loop, client, server, journal = self._loop, self._client, self.server, self.journal
        if loop is not None:
            steps.append(("cancel in-flight requests", loop.cancel_all))
            if client is not None and self._loaded_adapter:
                name = self.adapter_name
                steps.append(("unload the adapter we loaded", lambda: loop.run(unregister_adapter(client, name))))
            if client is not None:
                steps.append(("close the HTTP pool", lambda: loop.run(client.aclose())))
            steps.append(("stop the event loop", loop.close))
        if server is not None:
            steps.append(("stop the vLLM server we launched", server.stop))
        if journal is not None:
            steps.append(("close the journal", journal.close))
        steps.append(("export the traces", self.tracing.shutdown))
        self.run_cleanup_steps(steps)
        self._loaded_adapter = False
        self._client = self._loop = None
        self.gen_method = None

    def __enter__(self) -> RemoteBackend:
        self.initialize()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.teardown()

    def __del__(self) -> None:
        """Collected without ``teardown()``: release everything without waiting on anything.

        The collector can run on any thread, the loop's own included, so nothing here waits
        on the loop: the server's group is killed, and the pool is closed by the loop itself
        as its last task before it stops.
        """
        if getattr(self, "_torn_down", True):
            return
        self._torn_down = True
        with contextlib.suppress(Exception):
            if self.server is not None:
                self.server.kill_now()
        with contextlib.suppress(Exception):
            if self._loop is not None:
                self._loop.close_soon(self._client.aclose() if self._client is not None else None)
        with contextlib.suppress(Exception):
            if self.journal is not None:
                self.journal.close()

    # -- wiring ----------------------------------------------------------------------------

    @property
    def owns_server(self) -> bool:
        return self.server is not None

    @property
    def processor(self) -> Processor:
        return self.kind.processor

    @property
    def structured_outputs(self) -> dict[str, Any] | None:
        """The constraint every request carries (None: unconstrained, and always for time series).

        Before ``initialize()`` the run's first choice; after it, the one the server accepted.
        """
        if self.server_info is not None and self.server_info.structured_outputs is not None:
            return dict(self.server_info.structured_outputs)
        return self.kind.structured_outputs

    @property
    def prompt(self) -> str:
        """The prompt the preflight sends (a time series' jobs end theirs in a group's prefill)."""
        return self.kind.prompt

    def server_settings(self) -> ServerSettings:
        """How this run's adapter is launched when no base URL is given (``launch_settings``)."""
        return launch_settings(self.run, self.settings, self.config, self.model_metadata)

    def _server_address(self) -> tuple[str | list[str], str | list[str] | None]:
        if self.settings.base_urls:
            return self.settings.base_urls, self.settings.api_keys or None
        self.server = VllmServer(self.server_settings())
        self.server.start()
        self.server.wait_ready(on_wait=lambda waited: self._status(f"starting vLLM… {waited:.0f} s"))
        return self.server.base_url, self.server.api_key

    async def _wait_for_server(self, client: InferenceClient, *, health_only: bool) -> None:
        def waiting(waited: float) -> None:
            self._status(f"waiting for the server at {client.display_url}… {waited:.0f} s")

        adapter = None if health_only else self.adapter_name
        await wait_for_server(client, adapter, self.settings.wait_for_server, on_wait=waiting)

    def _status(self, text: str) -> None:
        if self.on_status is not None:
            self.on_status(text)

    def _request_body(self, server: ServerInfo) -> dict[str, Any]:
        """The sampling fields, then the tenant's own (priority, cache salt, a gateway's extras)."""
        return {**self._sampling_body(server), **tenant_fields(self.settings)}

    def _sampling_body(self, server: ServerInfo) -> dict[str, Any]:
        return request_body(
            self.config,
            max_tokens=self.model_metadata.max_tokens_for(server.prompt_tokens, self.config.max_tokens_multiplier),
            keep_special_tokens=self.processor.needs_special_tokens,
            server=server,
            params=self._params,
            structured_outputs=server.structured_outputs,
        )

    async def _register_adapter(self, client: InferenceClient) -> None:
        path = self.settings.server_adapter_path or str(self.run.adapter_dir)
        if await register_adapter(client, self.adapter_name, path):
            self._loaded_adapter = True

    async def _run_engine(self, scheduler: Scheduler, jobs: Jobs) -> None:
        """The scheduler; beside it, for a server we launched, a supervisor that restarts it if it dies."""
        if self.server is None:
            await scheduler.run(jobs)
        else:
            await run_supervised(scheduler.run(jobs), self.server, max_restarts=self.settings.max_server_restarts)

    def _scheduler(self, client: InferenceClient) -> Scheduler:
        reregister = (lambda: self._register_adapter(client)) if self.settings.load_adapter else None
        known_slots = self.server.settings.max_num_seqs if self.server is not None else None
        return scheduler_for(self.settings, client, self.adapter_name, known_slots=known_slots, reregister=reregister)
