"""The only module that configures the OpenTelemetry SDK and its exporters.

`setup(cfg.telemetry)` builds a tracer provider and a meter provider from the config's
`telemetry` section and the standard OTEL_* environment variables, which the SDK and its
exporters read themselves (endpoint, headers, timeout, certificates, sampler, service name,
resource attributes, batch and export intervals). This module only picks which exporter runs:

- traces: OTLP over gRPC or HTTP, console, or none (then no tracer provider and no spans at
  all);
- metrics: the same exporter on a periodic reader (unless OTEL_METRICS_EXPORTER is none or
  prometheus), plus a Prometheus registry whenever the admin port is on (`admin_listen`),
  whatever the exporter; the admin HTTP server (http_api) serves `Telemetry.metrics_text()`
  at /metrics, so prometheus_client stays in this module.

`setup(..., defer=True)` with tracing off builds no SDK part at all yet: the meter it hands
out holds measurements (pending_meter.py) until `Telemetry.ready()` has loaded the SDK and
prometheus_client on a thread and made the real instruments. The sidecar awaits it once
gRPC serves, so the first Routes are answered meanwhile, and counted.

`Telemetry.shutdown()` flushes pending spans and metrics; the sidecar calls it last on stop.
Nothing here logs a header value: the exporters get their headers from the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import metrics, trace
from opentelemetry.environment_variables import OTEL_METRICS_EXPORTER, OTEL_TRACES_EXPORTER
from opentelemetry.sdk.environment_variables import OTEL_EXPORTER_OTLP_PROTOCOL

from routing_sidecar import __version__
from routing_sidecar.config import TelemetryConfig
from routing_sidecar.local_histogram import Feed, LocalHistogram, Reading
from routing_sidecar.pending_meter import PendingMeter

if TYPE_CHECKING:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        MetricExporter,
        MetricReader,
        MetricsData,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, SpanLimits
    from opentelemetry.sdk.trace.export import SpanExporter
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "routing-sidecar"
INSTRUMENTATION_NAME = "routing_sidecar"

Exporter = Literal["otlp_grpc", "otlp_http", "console", "none"]


def exporter_kind(cfg: TelemetryConfig) -> Exporter:
    """The configured exporter, else the one OTEL_TRACES_EXPORTER / _PROTOCOL name, else none."""
    if cfg.exporter is not None:
        return cfg.exporter
    name = os.environ.get(OTEL_TRACES_EXPORTER, "none").strip().lower()
    if name == "console":
        return "console"
    if name == "otlp":
        protocol = os.environ.get(OTEL_EXPORTER_OTLP_PROTOCOL, "grpc").strip().lower()
        return "otlp_http" if protocol.startswith("http") else "otlp_grpc"
    return "none"


def push_metrics() -> bool:
    """Whether the exporter pushes metrics too.

    Not when OTEL_METRICS_EXPORTER says none or prometheus: e.g. a Jaeger that takes traces
    only, with Prometheus scraping /metrics.
    """
    name = os.environ.get(OTEL_METRICS_EXPORTER, "").strip().lower()
    return name not in ("none", "prometheus")


def build_resource(cfg: TelemetryConfig) -> Resource:
    """service.name, service.version, and whatever OTEL_RESOURCE_ATTRIBUTES adds.

    service.name: the config's, else OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES', else
    routing-sidecar.
    """
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION  # noqa: PLC0415
    from opentelemetry.sdk.resources import Resource as SdkResource  # noqa: PLC0415

    attributes: dict[str, str] = {SERVICE_VERSION: __version__}
    if cfg.service_name:
        attributes[SERVICE_NAME] = cfg.service_name
    resource = SdkResource.create(attributes)
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(SdkResource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def _http_endpoint(base: str | None, path: str) -> str | None:
    # Like OTEL_EXPORTER_OTLP_ENDPOINT: a base URL to which the signal's path is appended.
    return f"{base.rstrip('/')}/{path}" if base else None


def _exporters(kind: Exporter, cfg: TelemetryConfig) -> tuple[SpanExporter, MetricExporter]:
    if kind == "otlp_grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # noqa: PLC0415
            OTLPMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        from routing_sidecar.span_encoding import encode_spans  # noqa: PLC0415

        class SpanExporterInPlace(OTLPSpanExporter):
            """The OTLP/gRPC span exporter, its batches built in place (span_encoding.py)."""

            def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
                return encode_spans(data)

        return (SpanExporterInPlace(endpoint=cfg.endpoint, insecure=cfg.insecure),
                OTLPMetricExporter(endpoint=cfg.endpoint, insecure=cfg.insecure))
    if kind == "otlp_http":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # noqa: PLC0415
            OTLPMetricExporter as HttpMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as HttpSpanExporter,
        )

        return (HttpSpanExporter(endpoint=_http_endpoint(cfg.endpoint, "v1/traces")),
                HttpMetricExporter(endpoint=_http_endpoint(cfg.endpoint, "v1/metrics")))
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

    return ConsoleSpanExporter(), ConsoleMetricExporter()


@dataclass
class Telemetry:
    """The providers the sidecar records through, and how to flush and stop them."""

    exporter: Exporter
    meter_provider: metrics.MeterProvider
    # None when tracing is off: no spans are made at all.
    tracer_provider: trace.TracerProvider | None = None
    # The Prometheus registry /metrics renders; None when the admin port is off.
    registry: CollectorRegistry | None = None
    _shutdowns: list[Callable[[], object]] = field(default_factory=list)
    # setup(defer=True): the config whose metric pipeline ready() builds, and the meter that
    # holds what is measured until then.
    _deferred: TelemetryConfig | None = None
    _pending: PendingMeter | None = None
    # Histograms aggregated in the process (local_histogram.py), carried by every reader.
    feed: Feed = field(default_factory=Feed)
    # The tracer provider's span limits when tracing is on.
    _span_limits: SpanLimits | None = None

    def export(self, histogram: LocalHistogram) -> None:
        """Report `histogram` through every metric reader, now and after ready()."""
        self.feed.add(histogram)

    @property
    def tracing(self) -> bool:
        """Whether spans are made and exported."""
        return self.tracer_provider is not None

    def metrics_text(self) -> bytes:
        """Every metric in the Prometheus text format (blocking: collects the meters)."""
        if self.registry is None:
            return b""
        from prometheus_client import generate_latest  # noqa: PLC0415 - loaded by ready()

        return generate_latest(self.registry)

    def tracer(self) -> trace.Tracer:
        """The sidecar's tracer (a no-op one when tracing is off).

        With tracing on, the SDK tracer's spans are made by `span_recording.LeanTracer`:
        the same spans for the same processors, at a fraction of the SDK span's cost.
        """
        provider = self.tracer_provider or trace.NoOpTracerProvider()
        tracer = provider.get_tracer(INSTRUMENTATION_NAME, __version__)
        if self._span_limits is None:
            return tracer
        from routing_sidecar.span_recording import LeanTracer  # noqa: PLC0415 - with the SDK

        return LeanTracer(tracer, self._span_limits)  # type: ignore[arg-type]

    def meter(self) -> metrics.Meter:
        """The sidecar's meter (until ready(), one that holds what it measures)."""
        if self._deferred is not None:
            if self._pending is None:
                self._pending = PendingMeter(INSTRUMENTATION_NAME, __version__)
            return self._pending
        return self.meter_provider.get_meter(INSTRUMENTATION_NAME, __version__)

    async def ready(self) -> None:
        """Build a deferred metric pipeline (on a thread) and hand it what was measured."""
        cfg = self._deferred
        if cfg is None:
            return
        registry, provider, resource = await asyncio.to_thread(_prometheus_pipeline, cfg,
                                                               self.feed)
        self.registry, self.meter_provider = registry, provider
        self._shutdowns.append(provider.shutdown)
        self._deferred = None
        if self._pending is not None:  # on the loop, so no measurement lands in between
            self._pending.attach(provider.get_meter(INSTRUMENTATION_NAME, __version__))
        _log_configured(self.exporter, cfg, resource)

    async def shutdown_within(self, timeout_s: float) -> bool:
        """Flush and stop as `shutdown` does, waiting at most `timeout_s`; False if cut short.

        The flush runs on a daemon thread: an unreachable collector, which the exporters retry
        for up to their own timeout, cannot keep the process from exiting after the grace
        period. Spans still pending then are lost, and a warning says so.
        """
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def run() -> None:
            try:
                self.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed after the timeout
                    loop.call_soon_threadsafe(done.set)

        threading.Thread(target=run, name="telemetry-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(done.wait(), timeout_s)
        except TimeoutError:
            log.warning("telemetry flush cut short: the collector did not answer in time",
                        extra={"waited_s": timeout_s})
            return False
        return True

    def shutdown(self) -> None:
        """Flush pending spans and metrics to their exporters, then stop (blocking)."""
        for stop in self._shutdowns:
            try:
                stop()
            except Exception:  # a broken exporter must not keep the process from exiting
                log.exception("telemetry shutdown step failed")
        self._shutdowns.clear()


# The resource attribute (semantic conventions' service.name), without importing the SDK.
SERVICE_NAME_KEY = "service.name"


def metrics_content_type() -> str:
    """The media type of `Telemetry.metrics_text()`."""
    from prometheus_client import CONTENT_TYPE_LATEST  # noqa: PLC0415

    return str(CONTENT_TYPE_LATEST)


def disabled() -> Telemetry:
    """No spans, no metrics, no Prometheus registry."""
    return Telemetry("none", metrics.NoOpMeterProvider())


def setup(cfg: TelemetryConfig, *, defer: bool = False) -> Telemetry:
    """Build the providers, exporters and admin port the config and OTEL_* variables ask for.

    `defer`: with tracing off, leave the metric pipeline (the SDK and prometheus_client) to
    `Telemetry.ready()`, which the caller must await.
    """
    kind = exporter_kind(cfg)
    if kind == "none" and not cfg.admin_listen:  # nothing to record to: no SDK at all
        _log_configured(kind, cfg, None)
        return disabled()
    if kind == "none" and defer:
        return Telemetry(kind, metrics.NoOpMeterProvider(), _deferred=cfg)
    feed = Feed()
    if kind == "none":
        registry, sdk_meters, resource = _prometheus_pipeline(cfg, feed)
        _log_configured(kind, cfg, resource)
        return Telemetry(kind, sdk_meters, None, registry, [sdk_meters.shutdown], feed=feed)
    return _traced(kind, cfg, feed)


def _prometheus_pipeline(
    cfg: TelemetryConfig, feed: Feed,
) -> tuple[CollectorRegistry, SdkMeterProvider, Resource]:
    """A meter provider whose only reader is a Prometheus registry of its own (tracing off)."""
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    registry = CollectorRegistry()  # one per sidecar, so several can share a process
    resource = build_resource(cfg)
    provider = MeterProvider(metric_readers=[_prometheus_reader(registry, feed, resource)],
                             resource=resource, shutdown_on_exit=False)
    return registry, provider, resource


def _prometheus_reader(registry: CollectorRegistry, feed: Feed,
                       resource: Resource) -> MetricReader:
    """The SDK's Prometheus reader, its collections carrying the feed's histograms too."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import AggregationTemporality  # noqa: PLC0415

    read = feed.reader(delta=False)  # Prometheus is cumulative

    class Reader(PrometheusMetricReader):
        def _receive_metrics(self, metrics_data: MetricsData | None,
                             timeout_millis: float = 10_000,
                             **kwargs: object) -> None:
            merged = _merged(metrics_data, read(), resource, AggregationTemporality.CUMULATIVE)
            if merged is not None:
                super()._receive_metrics(merged, timeout_millis, **kwargs)

    return Reader(registry=registry)


def _periodic_reader(exporter: MetricExporter, interval_ms: float | None, feed: Feed,
                     resource: Resource) -> MetricReader:
    """The SDK's periodic exporting reader, its collections carrying the feed's histograms."""
    from opentelemetry.sdk.metrics import Histogram  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
        AggregationTemporality,
        PeriodicExportingMetricReader,
    )

    # The exporter's preference (OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: delta and
    # lowmemory make histograms deltas), as the reader resolved it for the SDK's histograms.
    preferred = exporter._preferred_temporality or {}
    temporality = preferred.get(Histogram, AggregationTemporality.CUMULATIVE)
    read = feed.reader(delta=temporality is AggregationTemporality.DELTA)

    class Reader(PeriodicExportingMetricReader):
        def _receive_metrics(self, metrics_data: MetricsData | None,
                             timeout_millis: float = 10_000,
                             **kwargs: object) -> None:
            merged = _merged(metrics_data, read(), resource, temporality)
            if merged is not None:
                super()._receive_metrics(merged, timeout_millis, **kwargs)

    return Reader(exporter, export_interval_millis=interval_ms)


def _merged(data: MetricsData | None, readings: list[Reading], resource: Resource,
            temporality: AggregationTemporality) -> MetricsData | None:
    """The SDK's collection with the local histograms added under the sidecar's scope."""
    from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
        Histogram,
        HistogramDataPoint,
        Metric,
        MetricsData,
        ResourceMetrics,
        ScopeMetrics,
    )
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope  # noqa: PLC0415

    now = time.time_ns()
    metrics = [
        Metric(h.name, h.description, h.unit, Histogram(
            [HistogramDataPoint(p.attributes, start, now, p.count, p.sum, p.bucket_counts,
                                h.bounds, p.min, p.max) for p in points], temporality))
        for h, start, points in readings if points
    ]
    if not metrics:
        return data
    ours = InstrumentationScope(INSTRUMENTATION_NAME, __version__)
    resources = list(data.resource_metrics) if data is not None else []
    if not resources:
        return MetricsData([ResourceMetrics(resource, [ScopeMetrics(ours, metrics, "")], "")])
    first = resources[0]
    scopes = list(first.scope_metrics)
    for i, scope in enumerate(scopes):
        if scope.scope.name == INSTRUMENTATION_NAME:
            scopes[i] = ScopeMetrics(scope.scope, [*scope.metrics, *metrics], scope.schema_url)
            break
    else:
        scopes.append(ScopeMetrics(ours, metrics, ""))
    resources[0] = ResourceMetrics(first.resource, scopes, first.schema_url)
    return MetricsData(resources)


def _traced(kind: Exporter, cfg: TelemetryConfig, feed: Feed) -> Telemetry:
    """Tracing on: tracer and meter providers, built now (the first RPC's span needs them)."""
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased  # noqa: PLC0415

    resource = build_resource(cfg)
    readers: list[MetricReader] = []
    registry = None
    if cfg.admin_listen:
        from prometheus_client import CollectorRegistry  # noqa: PLC0415

        registry = CollectorRegistry()  # one per sidecar, so several can share a process
        readers.append(_prometheus_reader(registry, feed, resource))
    span_exporter, metric_exporter = _exporters(kind, cfg)
    # No ratio configured: the SDK reads OTEL_TRACES_SAMPLER(_ARG), default parent-based.
    sampler = (ParentBased(TraceIdRatioBased(cfg.sample_ratio))
               if cfg.sample_ratio is not None else None)
    # shutdown_on_exit off: stop() flushes once, bounded; no second flush at exit.
    limits = SpanLimits()  # the OTEL_*_LIMIT variables, read once for both tracers
    tracer_provider = TracerProvider(resource=resource, sampler=sampler, span_limits=limits,
                                     shutdown_on_exit=False)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    shutdowns: list[Callable[[], object]] = [tracer_provider.shutdown]
    if push_metrics():
        interval = cfg.metric_export_interval_s
        readers.append(_periodic_reader(
            metric_exporter, interval * 1000 if interval is not None else None, feed, resource))
    meter_provider: metrics.MeterProvider = metrics.NoOpMeterProvider()
    if readers:
        sdk_meters = MeterProvider(metric_readers=readers, resource=resource,
                                   shutdown_on_exit=False)
        shutdowns.append(sdk_meters.shutdown)
        meter_provider = sdk_meters
    _log_configured(kind, cfg, resource, prometheus=registry is not None)
    return Telemetry(kind, meter_provider, tracer_provider, registry, shutdowns, feed=feed,
                     _span_limits=limits)


def _log_configured(kind: Exporter, cfg: TelemetryConfig, resource: Resource | None, *,
                    prometheus: bool = True) -> None:
    log.info("telemetry configured", extra={
        "exporter": kind, "endpoint": _redacted(cfg.endpoint),
        "prometheus": prometheus and resource is not None,
        "service_name": resource.attributes.get(SERVICE_NAME_KEY) if resource else None,
    })


def _redacted(url: str | None) -> str | None:
    """An endpoint without any user:password part, for logs."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=f"{netloc}:{parts.port}" if parts.port else netloc))

