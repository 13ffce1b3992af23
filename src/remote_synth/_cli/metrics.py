"""``generate --metrics-port``: the job's Prometheus metrics, read from the backend at each scrape.

Nothing is counted twice or on the engine's path: a collector reads the engine's own figures
(``EngineStats``, the window, what is in flight) and the last logical batch's progress when
Prometheus asks. Names follow the OpenTelemetry GenAI conventions where they have one (the
``gen_ai_request_model`` and ``gen_ai_operation_name`` labels on every series); the rest are
``remote_synth_*``. No record content and no key is ever a label.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .._exceptions import ConfigError

if TYPE_CHECKING:
    from .._backend import RemoteBackend
    from .._engine import Progress

__all__ = ["JobMetrics", "chain", "serving_metrics"]

T = TypeVar("T")

OPERATION = "text_completion"
"""``gen_ai.operation.name`` for the completions API."""


class JobMetrics(Collector):
    """One job's figures, for a registry of its own."""

    def __init__(self, backend: RemoteBackend) -> None:
        self.backend = backend
        self.progress: Progress | None = None
        """The last logical batch's totals (one reference, replaced whole: no lock needed)."""

    def on_batch(self, progress: Progress) -> None:
        """Chained into the backend's ``on_batch``."""
        self.progress = progress

    def collect(self) -> Iterable[Metric]:
        labels = {"gen_ai_request_model": self.backend.adapter_name, "gen_ai_operation_name": OPERATION}
        names, values = list(labels), list(labels.values())
        progress = self.progress
        records = CounterMetricFamily("remote_synth_records", "Records accepted (valid) and rejected (invalid).",
                                      labels=[*names, "outcome"])  # fmt: skip
        records.add_metric([*values, "valid"], progress.valid if progress else 0)
        records.add_metric([*values, "invalid"], progress.invalid if progress else 0)
        target = GaugeMetricFamily("remote_synth_records_target", "Valid records the job asks for.", labels=names)
        target.add_metric(values, self.backend.config.num_records)
        yield from (records, target)
        yield from self._engine(names, values)

    def _engine(self, names: list[str], values: list[str]) -> Iterator[Metric]:
        stats, scheduler = self.backend.engine_stats, self.backend.scheduler
        requests = CounterMetricFamily("remote_synth_requests", "Completions requests sent.", labels=names)
        requests.add_metric(values, stats.requests if stats else 0)
        prompts = CounterMetricFamily("remote_synth_prompts", "Prompts by what became of them.",
                                      labels=[*names, "state"])  # fmt: skip
        for state in ("sent", "completed", "discarded"):
            prompts.add_metric([*values, state], getattr(stats, f"prompts_{state}") if stats else 0)
        failures = CounterMetricFamily("remote_synth_request_failures", "Failed attempts (retried or final), by "
                                       "the server's status or connection/timeout.", labels=[*names, "status"])  # fmt: skip
        for status, count in sorted((stats.failures if stats else {}).items()):
            failures.add_metric([*values, status], count)
        window = GaugeMetricFamily("remote_synth_window_prompts", "Prompts the engine lets be in flight.", labels=names)
        in_flight = GaugeMetricFamily("remote_synth_in_flight_prompts", "Prompts at the server now.", labels=names)
        if scheduler is not None:
            window.add_metric(values, scheduler.window.limit)
            in_flight.add_metric(values, scheduler.in_flight)
        yield from (requests, prompts, failures, window, in_flight)
        load = stats.load if stats else None
        if load is not None:
            for kind, seen in (("running", load.running), ("waiting", load.waiting)):
                gauge = GaugeMetricFamily(f"remote_synth_server_{kind}_sequences",
                                          f"Sequences the server last said were {kind}.", labels=names)  # fmt: skip
                gauge.add_metric(values, seen)
                yield gauge


@contextlib.contextmanager
def serving_metrics(backend: RemoteBackend, host: str, port: int | None) -> Iterator[JobMetrics | None]:
    """Serve ``backend``'s metrics on ``host:port`` while the block runs (None: no metrics)."""
    if port is None:
        yield None
        return
    metrics = JobMetrics(backend)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {port}: cannot listen on {host}:{port} ({exc.strerror})") from None
    try:
        yield metrics
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def chain(first: Callable[[T], None], then: Callable[[T], None] | None) -> Callable[[T], None]:
    """Both callbacks, in order (``then`` may be None)."""
    if then is None:
        return first

    def both(value: T) -> None:
        first(value)
        then(value)

    return both
