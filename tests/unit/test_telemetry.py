"""Telemetry setup from config and OTEL_* variables, the log context, and attempt-span helpers."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from routing_sidecar import logs, telemetry
from routing_sidecar.config import TelemetryConfig, parse_config
from routing_sidecar.errors import ConfigError
from routing_sidecar.grpc_api.spans import parent_context, trace_ids_of
from routing_sidecar.records import DecisionRecord
from routing_sidecar.span_recording import LeanSpan
from tests.conftest import DEFAULT_CONFIG

OTEL_VARS = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SERVICE_NAME",
             "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("configured", "env", "expected"),
    [
        (None, {}, "none"),
        (None, {"OTEL_TRACES_EXPORTER": "otlp"}, "otlp_grpc"),
        (None, {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
         "otlp_http"),
        (None, {"OTEL_TRACES_EXPORTER": "console"}, "console"),
        (None, {"OTEL_TRACES_EXPORTER": "zipkin"}, "none"),
        ("none", {"OTEL_TRACES_EXPORTER": "otlp"}, "none"),  # the file wins over the env
        ("otlp_http", {"OTEL_TRACES_EXPORTER": "console"}, "otlp_http"),
    ],
)
def test_exporter_from_config_else_env(
    monkeypatch: pytest.MonkeyPatch, configured: str | None, env: dict[str, str], expected: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert telemetry.exporter_kind(TelemetryConfig(exporter=configured)) == expected  # type: ignore[arg-type]


def test_service_name_config_then_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    res = telemetry.build_resource(TelemetryConfig())
    assert res.attributes["service.name"] == "routing-sidecar"
    assert res.attributes["service.version"] == telemetry.__version__
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,team=infra")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "router-east")
    res = telemetry.build_resource(TelemetryConfig())
    assert res.attributes["service.name"] == "router-east"
    assert res.attributes["team"] == "infra"
    res = telemetry.build_resource(TelemetryConfig(service_name="from-file"))
    assert res.attributes["service.name"] == "from-file"
    assert res.attributes["deployment.environment"] == "prod"


def test_sample_ratio_applies_to_roots_and_follows_a_sampled_parent() -> None:
    tel = telemetry.setup(TelemetryConfig(exporter="console", sample_ratio=0.0, admin_listen=""))
    try:
        tracer = tel.tracer()
        assert not tracer.start_span("root").is_recording()
        parent = SpanContext(0x1234, 0x5678, is_remote=True,
                             trace_flags=TraceFlags(TraceFlags.SAMPLED))
        ctx = trace.set_span_in_context(NonRecordingSpan(parent))
        child = tracer.start_span("child", context=ctx)
        assert child.is_recording()
        assert isinstance(child, LeanSpan)  # the sidecar's spans, not the SDK span class
        child.end()
    finally:
        tel.shutdown()


def test_sampler_from_env_when_the_file_sets_no_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    tel = telemetry.setup(TelemetryConfig(exporter="console", admin_listen=""))
    try:
        assert not tel.tracer().start_span("root").is_recording()
    finally:
        tel.shutdown()


def test_tracing_off_means_no_provider_and_no_spans() -> None:
    tel = telemetry.setup(TelemetryConfig(exporter="none", admin_listen=""))
    assert not tel.tracing and tel.tracer_provider is None and tel.registry is None
    assert not tel.tracer().start_span("x").is_recording()
    tel.shutdown()


def test_http_endpoint_gets_the_signal_paths() -> None:
    spans, metrics = telemetry._exporters(
        "otlp_http", TelemetryConfig(endpoint="http://collector:4318/"))
    assert spans._endpoint == "http://collector:4318/v1/traces"  # type: ignore[attr-defined]
    assert metrics._endpoint == "http://collector:4318/v1/metrics"  # type: ignore[attr-defined]
    spans.shutdown()
    metrics.shutdown()


def test_the_grpc_span_exporter_builds_its_batches_in_place() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan

    spans, metrics = telemetry._exporters(
        "otlp_grpc", TelemetryConfig(endpoint="http://127.0.0.1:4317", insecure=True))
    assert isinstance(spans, OTLPSpanExporter)
    span = ReadableSpan("s", SpanContext(1, 2, False), attributes={"a": ("x", "y")},
                        resource=Resource({}))
    request = spans._translate_data([span])  # type: ignore[attr-defined]
    attrs = request.resource_spans[0].scope_spans[0].spans[0].attributes
    assert [v.string_value for v in attrs[0].value.array_value.values] == ["x", "y"]
    assert type(spans)._translate_data.__module__ == "routing_sidecar.telemetry"
    spans.shutdown()
    metrics.shutdown()


def test_endpoint_credentials_are_redacted_for_logs() -> None:
    assert telemetry._redacted("https://user:pw@otel.example:4317/x") == "https://otel.example:4317/x"
    assert telemetry._redacted("http://127.0.0.1:4317") == "http://127.0.0.1:4317"


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ("{admin_listen: 'nope'}", "telemetry.admin_listen:"),
        ("{admin_listen: '127.0.0.1:70000'}", "telemetry.admin_listen:"),
        ("{exporter: jaeger}", "telemetry.exporter:"),
        ("{sample_ratio: 1.5}", "telemetry.sample_ratio:"),
        ("{metric_export_interval_s: 0}", "telemetry.metric_export_interval_s:"),
        ("{headers: 'x-api-key=1'}", "telemetry.headers:"),
    ],
)
def test_bad_telemetry_section_names_the_path(section: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_without_shipped_telemetry() + f"\ntelemetry: {section}\n")
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def _without_shipped_telemetry() -> str:
    lines, out, skipping = DEFAULT_CONFIG.read_text().splitlines(), [], False
    for line in lines:
        if line.startswith("telemetry:"):
            skipping = True
            continue
        if skipping and (line.startswith(" ") or line.startswith("#") or not line):
            continue
        skipping = False
        out.append(line)
    return "\n".join(out)


def test_shipped_config_keeps_tracing_off_and_metrics_on_loopback() -> None:
    cfg = parse_config(DEFAULT_CONFIG.read_text())
    assert cfg.telemetry.exporter is None and cfg.admin_listen() == "127.0.0.1:9464"
    assert cfg.admin.token_file is None
    assert parse_config(_without_shipped_telemetry()).telemetry == TelemetryConfig()


def test_json_logs_carry_trace_and_decision_ids() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger("test.telemetry.logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("outside")
        ctx = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
        with trace.use_span(NonRecordingSpan(ctx)):
            logs.bind_decision("d-123")
            logger.warning("inside", extra={"scope": "global"})
    finally:
        logger.removeHandler(handler)
        logs.bind_decision("")
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "trace_id" not in outside and "decision_id" not in outside
    assert inside["trace_id"] == f"{0xABC:032x}" and inside["span_id"] == f"{0xDEF:016x}"
    assert inside["decision_id"] == "d-123" and inside["scope"] == "global"


def test_trace_ids_only_for_sampled_spans_and_parent_from_stored_ids() -> None:
    sampled = SpanContext(0xA1, 0xB2, is_remote=False, trace_flags=TraceFlags(1))
    ids = trace_ids_of(NonRecordingSpan(sampled))
    assert (ids.trace_id, ids.span_id) == (f"{0xA1:032x}", f"{0xB2:016x}")
    unsampled = SpanContext(0xA1, 0xB2, is_remote=False, trace_flags=TraceFlags(0))
    assert trace_ids_of(NonRecordingSpan(unsampled)).trace_id == ""
    record = _record(ids.trace_id, ids.span_id)
    ctx = parent_context(record)
    assert ctx is not None
    parent = trace.get_current_span(ctx).get_span_context()
    assert (parent.trace_id, parent.span_id, parent.is_remote) == (0xA1, 0xB2, True)
    assert parent_context(_record("", "")) is None
    assert parent_context(_record("zz", "yy")) is None


def _record(trace_id: str, span_id: str) -> DecisionRecord:
    from routing_sidecar import domain

    return DecisionRecord(
        decision_id="d", task_id="t", task_type="fix_bug", status=domain.DecisionStatus.ROUTED,
        reason_code=domain.ReasonCode.SELECTED, chosen_model="m", chosen_provider="p",
        chosen_slot_id=None, tier=1, policy="code", objective=domain.Objective.BALANCED,
        estimated_cost_micros=1, reason="r", alternatives_json="[]", fallbacks_json="[]",
        labels_json="{}", dry_run=False, decided_at=0.0, config_hash="h",
        trace_id=trace_id, span_id=span_id,
    )


@pytest.mark.parametrize(("value", "push"), [(None, True), ("otlp", True), ("none", False),
                                             ("prometheus", False)])
def test_metrics_push_can_be_turned_off_by_env(
    monkeypatch: pytest.MonkeyPatch, value: str | None, push: bool
) -> None:
    if value is None:
        monkeypatch.delenv("OTEL_METRICS_EXPORTER", raising=False)
    else:
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", value)
    assert telemetry.push_metrics() is push


def test_a_pending_meter_hands_on_what_it_held_and_then_steps_aside() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from routing_sidecar.pending_meter import PendingMeter

    pending = PendingMeter("test")
    counter = pending.create_counter("early.count")
    histogram = pending.create_histogram("early.time", "s",
                                         explicit_bucket_boundaries_advisory=(0.5, 1.0))
    labels = {"model": "m1"}
    counter.add(2, labels)
    labels["model"] = "m2"  # the caller reuses its dict: what was held keeps its own copy
    histogram.record(0.7, {"model": "m1"})
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    pending.attach(provider.get_meter("test"))
    counter.add(3, {"model": "m1"})
    late = pending.create_counter("late.count")
    late.add(1)
    data = reader.get_metrics_data()
    assert data is not None
    points = {m.name: m.data.data_points
              for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert [(dict(p.attributes), p.value) for p in points["early.count"]] == [({"model": "m1"}, 5)]
    (timed,) = points["early.time"]
    assert timed.count == 1 and timed.explicit_bounds == (0.5, 1.0)
    assert [p.value for p in points["late.count"]] == [1]
    assert counter.add.__self__ is not counter  # the real instrument's own method now
    provider.shutdown()
