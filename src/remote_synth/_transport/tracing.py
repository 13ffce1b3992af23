"""Traces (the ``otel`` extra): a span per job, per logical batch and per request, and a W3C
``traceparent`` on every request, so that a vLLM started with ``--otlp-traces-endpoint`` (and a
router or gateway that passes the header on) continues our trace.

Without OpenTelemetry installed, or with nothing configured, every call here is a no-op that
costs a branch. Configuration is OpenTelemetry's own: an application that set up a tracer
provider (NSS's pipeline under ``opentelemetry-instrument``, say) gets our spans in its traces;
otherwise the standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_SERVICE_NAME``, ``OTEL_SDK_DISABLED``,
``OTEL_TRACES_EXPORTER=none``) make us export over OTLP/HTTP ourselves. Span attributes never
hold record contents or keys: the adapter's name, counts, statuses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = ["Tracing"]

logger = logging.getLogger("remote_synth.tracing")

Attributes = Mapping[str, str | int | float | bool]
SERVICE = "remote-synth"
NOT_INSTALLED = (
    "OTEL_* asks for traces, but OpenTelemetry is not installed: no traces (pip install 'remote-synth[otel]')"
)


class Tracing:
    """Where spans go: a tracer (None: nowhere) and the job span requests hang under.

    The engine runs on a thread of its own, so the job's context is handed over explicitly
    (``parent``), not through the caller's context variables.
    """

    def __init__(self, tracer: Tracer | None = None, provider: TracerProvider | None = None) -> None:
        self.tracer = tracer
        self.parent: Context | None = None
        self._provider = provider
        """A provider we set up ourselves (from ``OTEL_*``), flushed at ``shutdown``."""

    @classmethod
    def from_environment(cls) -> Tracing:
        """The application's tracer provider if it has one, else ours from ``OTEL_*``, else none."""
        try:
            from opentelemetry import trace
        except ImportError:
            if _asks_for_traces():
                logger.warning(NOT_INSTALLED)
            return cls()
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            return cls(trace.get_tracer("remote_synth"))
        provider = _provider_from_environment()
        return cls(provider.get_tracer("remote_synth"), provider) if provider is not None else cls()

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @contextlib.contextmanager
    def job(self, name: str, attributes: Attributes) -> Iterator[Span | None]:
        """The job's span; requests and batches started meanwhile are its children."""
        if self.tracer is None:
            yield None
            return
        with self.tracer.start_as_current_span(name, attributes=attributes, end_on_exit=True) as span:
            from opentelemetry import trace

            self.parent = trace.set_span_in_context(span)
            try:
                yield span
            finally:
                self.parent = None

    @contextlib.contextmanager
    def completions(self, model: str, prompts: int) -> Iterator[dict[str, str]]:
        """A client span around one completions request; yields the headers that carry it
        (``traceparent``). Without a tracer, nothing is built: this is on every request's path."""
        if self.tracer is None:
            yield {}
            return
        from opentelemetry import propagate, trace

        attributes: Attributes = {"gen_ai.operation.name": "text_completion", "gen_ai.request.model": model,
                      "remote_synth.prompts": prompts}  # fmt: skip
        with self.tracer.start_as_current_span(
            "POST /v1/completions", context=self.parent, kind=trace.SpanKind.CLIENT, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(span))
            yield carrier

    def batch(self, name: str, started: float, attributes: Attributes) -> None:
        """A span for a logical batch, which closed now and opened at ``started`` (``time.time()``)."""
        if self.tracer is None:
            return
        span = self.tracer.start_span(name, context=self.parent, attributes=attributes, start_time=_ns(started))
        span.end(end_time=_ns(time.time()))

    def shutdown(self) -> None:
        """Export what is buffered, if the provider is ours (an application's is left to it)."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _asks_for_traces() -> bool:
    """``OTEL_*`` names an OTLP endpoint and does not turn tracing off."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or env.get("OTEL_TRACES_EXPORTER", "") == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def _provider_from_environment() -> TracerProvider | None:
    """An OTLP/HTTP exporting provider when ``OTEL_*`` asks for one and the SDK is installed."""
    if not _asks_for_traces():
        return None
    env = os.environ
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        logger.warning(NOT_INSTALLED)
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", SERVICE)}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
