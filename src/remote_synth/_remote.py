"""``RemoteBackend``: NSS's generation contract against a vLLM OpenAI-compatible server.

It reads the NSS run directory as it is, reaches a running server (``base_url``)
or launches and owns one, sends each batch's prompts as several concurrent
requests carrying many prompts, validates every record locally with NSS's
rules, and returns NSS's ``GenerateJobResults``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from pydantic import BaseModel

from ._aio import LoopThread
from ._backend import GeneratorBackend
from ._batch import Batch, valid_fraction
from ._client import Completion, InferenceClient, RetryPolicy, TimeoutPolicy
from ._config import GenerateParameters, RemoteSettings
from ._exceptions import (
    APIConnectionError,
    AuthenticationError,
    BackendStateError,
    BadRequestError,
    ConfigError,
    NotFoundError,
    ServerCheckError,
)
from ._processors import create_processor
from ._prompt import build_prompt
from ._results import DataActionsFn, GenerateJobResults, GenerationBatches, GenerationStatus
from ._rundir import ModelMetadata, RunDirectory
from ._server import ServerSettings, VllmServer
from ._structured import structured_outputs_payload

__all__ = ["Progress", "RemoteBackend", "adapter_name_for"]

logger = logging.getLogger("remote_synth.remote")

#: vLLM sampling fields ``prepare_params`` passes through under their own names.
PASSTHROUGH_FIELDS = frozenset(
    {"top_p", "top_k", "min_p", "repetition_penalty", "seed", "stop", "stop_token_ids", "presence_penalty",
     "frequency_penalty", "ignore_eos", "skip_special_tokens", "include_stop_str_in_output"}
)  # fmt: skip
#: NSS names that map onto other fields (``_get_api_param_mapping``).
MAPPED_FIELDS = frozenset({"max_new_tokens", "temperature", "do_sample", "num_beams", "early_stopping", "eos_token_id"})
PROBE_REGEX = "remote-synth-probe-[0-9]{4}"
PROBE_VALUE = "rs-probe"


@dataclass(frozen=True)
class Progress:
    """Where a ``generate()`` call stands after a batch."""

    batch: int
    valid: int
    invalid: int
    target: int
    prompts: int
    elapsed: float

    @property
    def valid_fraction(self) -> float:
        return valid_fraction(self.valid, self.invalid)

    @property
    def records_per_second(self) -> float:
        return self.valid / self.elapsed if self.elapsed > 0 else 0.0


def adapter_name_for(run: RunDirectory) -> str:
    """A name that is the same wherever the run directory is copied (laptop, GPU host, container)."""
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "dataset_schema.json"):
        digest.update((run.adapter_dir / name).read_bytes())
    return "nss-" + digest.hexdigest()[:12]


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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.transport = transport  # a test seam: a fake transport instead of the network
        self.run = _run_directory(workdir).check()
        self.workdir = self.run.path
        self.settings = settings if settings is not None else RemoteSettings.load()
        self.config = _generation_parameters(config, self.run)
        self.model_metadata = _model_metadata(model_metadata, self.run)
        self.use_detailed_logs = self.settings.use_detailed_logs if use_detailed_logs is None else use_detailed_logs
        self.on_batch = on_batch
        self.columns = self.run.columns
        prompt_config = self.model_metadata.prompt_config
        self.group_by = self.run.config.data.group_training_examples_by
        self.processor = create_processor(
            self.run.schema,
            group_by=self.group_by,
            order_by=self.run.config.data.order_training_examples_by,
            bos_token=prompt_config.bos_token,
            eos_token=prompt_config.eos_token,
            validation=self.config.validation,
            detailed_errors=self.use_detailed_logs,
        )
        self.prompt = build_prompt(self.columns, prompt_config.template, self.model_metadata.instruction)
        self.adapter_name = self.settings.adapter_name or adapter_name_for(self.run)
        self.structured_outputs = structured_outputs_payload(
            self.config,
            self.run.schema,
            grouped=self.group_by is not None,
            bos_token=prompt_config.bos_token,
            eos_token=prompt_config.eos_token,
            max_sequences_per_example=self.run.config.max_sequences_per_example,
        )
        self.server: VllmServer | None = None
        self.server_context: int | None = None
        self.prompt_tokens: int | None = None
        self._client: InferenceClient | None = None
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
            base_url, api_key = self._server_address()
            self._client = InferenceClient(
                base_url,
                api_key=api_key,
                timeouts=TimeoutPolicy(read=self.settings.request_timeout),
                retry=RetryPolicy(max_attempts=self.settings.max_attempts),
                max_concurrency=self.settings.max_concurrency,
                prompts_per_request=self.settings.prompts_per_request,
                transport=self.transport,
            )
            self._check_server()
            self.gen_method = self._complete
        except BaseException:
            self.teardown()
            raise

    def prepare_params(self, **kwargs: Any) -> None:
        """Sampling parameters under NSS's names; ``generate()`` uses exactly these.

        ``max_new_tokens`` → ``max_tokens``; ``do_sample=False`` → temperature 0;
        ``eos_token_id`` → ``stop_token_ids``; ``num_beams`` 1 and ``early_stopping``
        are accepted and dropped. Unknown names are an error.
        """
        self._params = self._sampling_fields(kwargs)

    def generate(self, data_actions_fn: DataActionsFn | None = None) -> GenerateJobResults:
        """NSS's loop: adaptive batches until the target or a stop condition."""
        if self._client is None or self._torn_down:
            raise BackendStateError("call initialize() before generate() (and not after teardown())")
        target = self.config.num_records
        body = self._request_body()
        batches = GenerationBatches(
            target_num_records=target,
            invalid_fraction_threshold=self.config.invalid_fraction_threshold,
            patience=self.config.patience,
            data_actions_fn=data_actions_fn,
        )
        started = time.monotonic()
        self.gen_results = None
        try:
            while batches.num_valid_records < target and not batches.is_stopped:
                self._run_batch(batches, body, started)
        finally:
            self.elapsed_time = time.monotonic() - started
            self.gen_results = self._results(batches)
        batches.raise_for_status()
        return self.gen_results

    def teardown(self) -> None:
        """Cancel in-flight requests, close the pool, stop our server; idempotent, steps isolated."""
        if self._torn_down:
            return
        self._torn_down = True
        steps: list[tuple[str, Callable[[], Any]]] = []
        loop, client, server = self._loop, self._client, self.server
        if loop is not None:
            steps.append(("cancel in-flight requests", loop.cancel_all))
            if client is not None:
                steps.append(("close the HTTP pool", lambda: loop.run(client.aclose())))
            steps.append(("stop the event loop", loop.close))
        if server is not None:
            steps.append(("stop the vLLM server we launched", server.stop))
        self.run_cleanup_steps(steps)
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
        with contextlib.suppress(Exception):
            self.teardown()

    # -- server ----------------------------------------------------------------------------

    @property
    def owns_server(self) -> bool:
        return self.server is not None

    def server_settings(self) -> ServerSettings:
        """How this run's adapter is launched when no base URL is given."""
        s = self.settings
        model = s.base_model or self.model_metadata.model_name_or_path
        return ServerSettings(
            model=model,
            adapter_name=self.adapter_name,
            adapter_path=self.run.adapter_dir,
            max_lora_rank=self.run.adapter_config.r,
            max_model_len=s.max_model_len or _fitting_context(model, self.model_metadata),
            host=s.host,
            port=s.port,
            api_key=s.api_key.get_secret_value() if s.api_key else None,
            dtype=s.dtype,
            structured_outputs_backend=self._structured_outputs_backend(),
            log_file=s.server_log or self.run.path / "generate" / "logs" / "vllm-server.log",
            startup_timeout=s.startup_timeout,
        )

    def _structured_outputs_backend(self) -> str:
        """NSS's choice, except that json_schema on "auto" becomes xgrammar, which can forbid white space."""
        backend = self.config.structured_generation_backend
        if backend == "auto" and self.config.structured_generation_schema_method == "json_schema":
            return "xgrammar"
        return backend

    def _server_address(self) -> tuple[str, str | None]:
        if self.settings.base_url:
            key = self.settings.api_key
            return self.settings.base_url, key.get_secret_value() if key else None
        if self.run.adapter_config.modules_to_save:
            raise ConfigError(f"{self.run.adapter_dir}: adapters with modules_to_save cannot be served by vLLM")
        self.server = VllmServer(self.server_settings())
        self.server.start()
        self.server.wait_ready()
        return self.server.base_url, self.server.api_key

    def _check_server(self) -> None:
        """The adapter is served, the prompt fits, and structured outputs really apply."""
        assert self._client is not None and self._loop is not None
        client = self._client
        health = self._loop.run(client.health())
        if health >= 500:  # 404: a gateway without /health; 0: no answer, which /v1/models reports below
            raise ServerCheckError(f"the server at {client.base_url} is not healthy (/health answered HTTP {health})")
        try:
            models = self._loop.run(client.models())
        except APIConnectionError as exc:
            raise type(exc)(
                f"cannot reach a server at {client.base_url} ({exc}); check --base-url and that it runs"
            ) from None
        except AuthenticationError as exc:
            raise AuthenticationError(
                f"the server at {client.base_url} refused the API key (HTTP {exc.status_code}); "
                "pass the right key with --api-key-env NAME or REMOTE_SYNTH_API_KEY",
                status_code=exc.status_code,
            ) from None
        by_id = {m.get("id"): m for m in models}
        if self.adapter_name not in by_id:
            served = ", ".join(sorted(str(k) for k in by_id)) or "nothing"
            raise NotFoundError(
                f"adapter {self.adapter_name!r} is not served by {client.base_url} (it serves: {served}); "
                "pass the served name with --adapter-name, or launch it with `remote-synth serve RUN_DIR`",
                status_code=404,
            )
        self.server_context = _context_length(by_id, self.adapter_name)
        self.prompt_tokens = self._loop.run(client.count_prompt_tokens(self.adapter_name, self.prompt))
        if self.server_context is not None and self.server_context - self.prompt_tokens < 1:
            raise ServerCheckError(
                f"the prompt ({self.prompt_tokens} tokens) does not fit the server's context ({self.server_context}); "
                "launch the server with a larger --max-model-len"
            )
        if self.structured_outputs is not None:
            self._check_structured_outputs()

    def _check_structured_outputs(self) -> None:
        """Old servers and gateways drop unknown fields silently: make sure the constraint bites."""
        assert self._client is not None and self._loop is not None
        json_method = "json" in (self.structured_outputs or {})
        probe: dict[str, Any] = (
            {"json": {"type": "object", "properties": {"probe": {"enum": [PROBE_VALUE]}}, "required": ["probe"]}}
            if json_method
            else {"regex": PROBE_REGEX}
        )
        base = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_tokens": self._clamp_max_tokens(64)}
        try:
            answer = self._probe({**base, "structured_outputs": probe})
            self._probe({**base, "max_tokens": 1, "structured_outputs": self.structured_outputs})
        except BadRequestError as exc:
            raise ServerCheckError(
                f"the server rejected the structured-output constraint ({exc}); "
                "try structured_generation_schema_method='json_schema' or turn structured generation off"
            ) from None
        if not _obeys_probe(answer, json_method):
            raise ServerCheckError(
                f"the server at {self._client.base_url} ignored `structured_outputs` (vLLM older than 0.12, or a "
                "gateway that drops unknown fields): upgrade the server or turn structured generation off"
            )

    def _probe(self, params: dict[str, Any]) -> Completion:
        assert self._client is not None and self._loop is not None
        return self._loop.run(self._client.complete_many(self.adapter_name, [self.prompt], params))[0]

    # -- requests --------------------------------------------------------------------------

    def _sampling_fields(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(kwargs) - PASSTHROUGH_FIELDS - MAPPED_FIELDS)
        if unknown:
            raise ConfigError(
                f"unknown sampling parameter(s) {unknown}; known: {sorted(PASSTHROUGH_FIELDS | MAPPED_FIELDS)}"
            )
        fields = {k: v for k, v in kwargs.items() if k in PASSTHROUGH_FIELDS}
        temperature = _resolve_temperature(kwargs, self.config.temperature)
        checked = {"temperature": temperature, **{k: fields[k] for k in ("top_p", "repetition_penalty") if k in fields}}
        GenerateParameters.resolve(overrides=checked, use_env=False)  # ranges, with field-named errors
        fields["temperature"] = temperature
        if (beams := kwargs.get("num_beams", 1)) not in (None, 1):
            raise ConfigError(f"num_beams={beams}: beam search is not supported by the remote backend; use 1")
        if "max_new_tokens" in kwargs:
            max_new = kwargs["max_new_tokens"]
            if not isinstance(max_new, int) or max_new < 1:
                raise ConfigError(f"max_new_tokens must be a positive integer (got {max_new!r})")
            fields["max_tokens"] = max_new
        if "eos_token_id" in kwargs:
            eos = kwargs["eos_token_id"]
            fields["stop_token_ids"] = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        return fields

    def _request_body(self) -> dict[str, Any]:
        """Every sampling field, explicitly (unset fields would take the server's defaults)."""
        grouped = self.processor.needs_special_tokens
        body: dict[str, Any] = {
            "temperature": self.config.temperature,
            "top_p": self.config.top_p,
            "top_k": -1,
            "min_p": 0.0,
            "repetition_penalty": self.config.repetition_penalty,
            "max_tokens": self.model_metadata.max_seq_length,
            "skip_special_tokens": not grouped,
            "include_stop_str_in_output": grouped,
            "ignore_eos": False,
        }
        body.update(self._params or {})
        body["max_tokens"] = self._clamp_max_tokens(int(body["max_tokens"]))
        if self.structured_outputs is not None:
            body["structured_outputs"] = self.structured_outputs
        return body

    def _clamp_max_tokens(self, wanted: int) -> int:
        """Deviation from NSS: a server rejects prompt + max_tokens > context, so fit it."""
        if self.server_context is None or self.prompt_tokens is None:
            return wanted
        room = self.server_context - self.prompt_tokens
        if wanted > room:
            logger.info(
                "max_tokens %d clamped to %d (server context %d, prompt %d tokens)",
                wanted,
                room,
                self.server_context,
                self.prompt_tokens,
            )
            return room
        return wanted

    async def _complete(self, n: int, body: dict[str, Any]) -> list[Completion]:
        assert self._client is not None
        return await self._client.complete_many(self.adapter_name, [self.prompt] * n, body)

    def _run_batch(self, batches: GenerationBatches, body: dict[str, Any], started: float) -> None:
        assert self._loop is not None
        n = batches.get_next_num_prompts()
        completions = self._loop.run(self._complete(n, body))
        batch = Batch(self.processor)
        for i, completion in enumerate(completions):
            batch.process(i, completion.text)
        batches.add_batch(batch)
        batch.log_summary(detailed_errors=self.use_detailed_logs)
        progress = Progress(
            batch=batches.num_batches,
            valid=batches.num_valid_records,
            invalid=batches.num_invalid_records,
            target=self.config.num_records,
            prompts=batches.num_prompts,
            elapsed=time.monotonic() - started,
        )
        logger.info(
            "progress: %d/%d valid records, %.0f records/s",
            progress.valid,
            progress.target,
            progress.records_per_second,
        )
        if self.on_batch is not None:
            self.on_batch(progress)

    def _results(self, batches: GenerationBatches) -> GenerateJobResults:
        """Results from what was generated so far (kept even when generation stops early)."""
        if batches.status is GenerationStatus.IN_PROGRESS and batches.num_valid_records >= self.config.num_records:
            batches.job_complete()
        truncate = self.group_by is None and batches.status is GenerationStatus.COMPLETE
        max_records = self.config.num_records if truncate else None
        return GenerateJobResults.from_batches(batches, max_records, self.columns, self.elapsed_time)


def _run_directory(workdir: Any) -> RunDirectory:
    if isinstance(workdir, RunDirectory):
        return workdir
    if isinstance(workdir, (str, Path)):
        return RunDirectory.open(workdir)
    # An NSS Workdir: its run directory (generation-only runs find their parent through info.json).
    run_dir = getattr(workdir, "run_dir", None)
    if run_dir is None:
        raise ConfigError(f"workdir must be a run directory path or an NSS Workdir, not {type(workdir).__name__}")
    return RunDirectory.open(run_dir)


def _generation_parameters(config: Any, run: RunDirectory) -> GenerateParameters:
    if isinstance(config, GenerateParameters):
        return config
    saved = run.config.generation
    if config is None:
        return GenerateParameters.resolve(saved)
    if isinstance(config, Mapping):
        return GenerateParameters.resolve(saved, config)
    generation = getattr(config, "generation", None)  # NSS SafeSynthesizerParameters
    if isinstance(generation, BaseModel):
        return GenerateParameters.resolve(generation.model_dump(mode="json"), use_env=False)
    raise ConfigError(f"config must be GenerateParameters, a mapping or NSS parameters, not {type(config).__name__}")


def _model_metadata(metadata: Any, run: RunDirectory) -> ModelMetadata:
    if metadata is None:
        return run.metadata
    if isinstance(metadata, ModelMetadata):
        return metadata
    if isinstance(metadata, BaseModel):  # NSS ModelMetadata
        return ModelMetadata.model_validate(metadata.model_dump(mode="json"))
    raise ConfigError(f"model_metadata must be ModelMetadata or NSS ModelMetadata, not {type(metadata).__name__}")


def _resolve_temperature(kwargs: Mapping[str, Any], default: float) -> float:
    """NSS's rules, without its quirk that an int temperature silently became 0.9."""
    temperature = kwargs.get("temperature")
    if kwargs.get("do_sample", True) is False:
        if temperature not in (None, 0, 0.0):
            raise ConfigError(f"do_sample=False with temperature={temperature}: a nonzero temperature needs sampling")
        return 0.0
    if temperature is None:
        return default
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ConfigError(f"temperature must be a number (got {temperature!r})")
    return float(temperature)


def _context_length(models: Mapping[Any, Mapping[str, Any]], adapter: str) -> int | None:
    entry = models[adapter]
    for candidate in (entry, models.get(entry.get("parent")), models.get(entry.get("root"))):
        if candidate and isinstance(candidate.get("max_model_len"), int):
            return int(candidate["max_model_len"])
    lengths = [m["max_model_len"] for m in models.values() if isinstance(m.get("max_model_len"), int)]
    return min(lengths) if lengths else None


def _fitting_context(model: str, metadata: ModelMetadata) -> int | None:
    """``--max-model-len`` for a launched server: NSS's max_seq_length when the base allows it.

    Only a local base model's config can be read offline; otherwise vLLM decides.
    """
    config_file = Path(model) / "config.json"
    if not config_file.is_file():
        return None
    try:
        native = int(json.loads(config_file.read_text())["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return min(native, metadata.max_seq_length)


def _obeys_probe(answer: Completion, json_method: bool) -> bool:
    """A constrained answer is the probe's (or, cut by max_tokens, its beginning); a free one is not."""
    if not json_method:
        return re.fullmatch(PROBE_REGEX, answer.text.strip()) is not None
    compact = re.sub(r"\s+", "", answer.text)
    expected = json.dumps({"probe": PROBE_VALUE}, separators=(",", ":"))
    return compact == expected or (
        answer.finish_reason == "length" and len(compact) > 1 and expected.startswith(compact)
    )
