"""Traces to a real OTLP receiver, and /metrics scraped, from a real sidecar."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from prometheus_client.parser import text_string_to_metric_families

from routing_sidecar import __version__
from routing_sidecar.app import Sidecar
from routing_sidecar.config import RouterConfig, parse_config
from routing_sidecar.logs import ContextFilter
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.conftest import config_dict
from tests.integration.otlp_receiver import attrs, otlp_receiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
ROUTE_PARENT = "00f067aa0ba902b7"
REPORT_PARENT = "b7ad6b7169203331"
SECRET = "sk-test-FAKE-9f8e7d6c5b4a"  # an API key the exporter must send and nobody may record
PROMPT = "Rewrite the payroll module; the admin password is hunter2"  # prompt-like label text


def traceparent(span_id: str) -> tuple[tuple[str, str]]:
    return (("traceparent", f"00-{TRACE_ID}-{span_id}-01"),)


def route_request(task_id: str, project: str = "obs") -> pb.RouteRequest:
    return pb.RouteRequest(
        task_id=task_id, task_type="fix_bug", priority=50, estimated_input_tokens=2000,
        max_output_tokens=1000, labels={"project": project, "note": PROMPT},
    )


def traced_config(tmp_path: Path, endpoint: str) -> RouterConfig:
    raw = config_dict(tmp_path)
    raw["telemetry"] = {"exporter": "otlp_grpc", "endpoint": endpoint,
                        "admin_listen": "127.0.0.1:0"}
    # Any decision crosses this budget's alert threshold (500 micro-USD) without exhausting it.
    raw["budgets"].append({"scope": "project:obs", "period": "day", "limit_usd": 1.0,
                           "alert_at": 0.0005})
    return parse_config(yaml.safe_dump(raw), "test")


def by_name(spans: list[Span], name: str) -> list[Span]:
    return [s for s in spans if s.name == name]


async def test_route_and_outcome_spans_reach_an_otlp_receiver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"x-api-key={SECRET}")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    caplog.set_level(logging.DEBUG)
    caplog.handler.addFilter(ContextFilter())
    started = time.time() - 30
    async with otlp_receiver() as (endpoint, got):
        cfg = traced_config(tmp_path, endpoint)
        first = Sidecar(cfg)
        await first.start()
        try:
            async with grpc.aio.insecure_channel(first.address) as ch:
                d = await pb_grpc.RouterStub(ch).Route(
                    route_request("t-obs-1"), metadata=traceparent(ROUTE_PARENT))
        finally:
            await first.stop()
        # The outcome arrives at a restarted sidecar: the decision's span ids come from the store.
        second = Sidecar(cfg)
        await second.start()
        try:
            async with grpc.aio.insecure_channel(second.address) as ch:
                ack = await pb_grpc.RouterStub(ch).ReportOutcome(pb.Outcome(
                    decision_id=d.decision_id, success=True, attempts=[
                        pb.Attempt(model=d.model, status=pb.ATTEMPT_STATUS_TIMEOUT,
                                   error_type="timeout",
                                   started_at=Timestamp(seconds=int(started)),
                                   duration=Duration(seconds=1, nanos=500_000_000),
                                   input_tokens=2000),
                        pb.Attempt(model=d.fallbacks[0].model, status=pb.ATTEMPT_STATUS_SUCCESS,
                                   started_at=Timestamp(seconds=int(started) + 2),
                                   duration=Duration(seconds=3), input_tokens=2000,
                                   output_tokens=800),
                    ]), metadata=traceparent(REPORT_PARENT))
        finally:
            await second.stop()

    assert d.status == pb.DECISION_STATUS_ROUTED and not ack.duplicate
    spans = got.spans()
    assert spans and {s.trace_id.hex() for s in spans} == {TRACE_ID}

    # One server span per RPC, continuing the caller's trace.
    (route,) = by_name(spans, "routing_sidecar.v1.Router/Route")
    assert route.kind == Span.SPAN_KIND_SERVER
    assert route.parent_span_id.hex() == ROUTE_PARENT
    a = attrs(route.attributes)
    assert a["routing.task.type"] == "fix_bug"
    assert a["routing.policy"] == d.policy == "code"
    assert a["routing.objective"] == "balanced"
    assert a["routing.status"] == "ROUTED"
    assert a["routing.decision.id"] == d.decision_id
    assert a["routing.dry_run"] is False
    assert a["routing.estimated_cost_micros"] == d.estimated_cost_micros > 0
    assert a["routing.candidates"] == len(d.alternatives)
    assert a["routing.fallbacks"] == len(d.fallbacks) == 2
    assert a["routing.task.id"] == "t-obs-1" and a["routing.reason"] == d.reason
    assert a["gen_ai.request.model"] == d.model
    assert a["gen_ai.provider.name"] == d.provider
    assert (a["rpc.system"], a["rpc.service"], a["rpc.method"]) == (
        "grpc", "routing_sidecar.v1.Router", "Route")
    assert a["rpc.grpc.status_code"] == 0
    # Every rejected candidate is named with its rejection, in the Decision's order; a budget
    # alert crossing is an event.
    rejected = [x for x in d.alternatives if x.rejection not in ("chosen", "fallback")]
    assert rejected
    assert a["routing.rejected.models"] == [x.model for x in rejected]
    assert a["routing.rejected.rejections"] == [x.rejection for x in rejected]
    assert [e.name for e in route.events] == ["routing.budget.alert"]
    (alert,) = [e for e in route.events if e.name == "routing.budget.alert"]
    assert attrs(alert.attributes)["routing.budget.scope"] == "project:obs"
    assert attrs(alert.attributes)["routing.budget.state"] == "ALERT"

    (report,) = by_name(spans, "routing_sidecar.v1.Router/ReportOutcome")
    assert report.parent_span_id.hex() == REPORT_PARENT
    assert attrs(report.attributes)["routing.attempts"] == 2

    # One child span per attempt, under the decision's span, timed as reported.
    attempts = sorted((s for s in spans if s.name.startswith("chat ")),
                      key=lambda s: attrs(s.attributes)["routing.attempt.index"])
    assert [s.name for s in attempts] == [f"chat {d.model}", f"chat {d.fallbacks[0].model}"]
    for s in attempts:
        assert s.parent_span_id == route.span_id
        assert s.kind == Span.SPAN_KIND_CLIENT
        assert [link.span_id for link in s.links] == [report.span_id]
    failed, ok = (attrs(s.attributes) for s in attempts)
    assert attempts[0].start_time_unix_nano == int(started) * 10**9
    assert attempts[0].end_time_unix_nano - attempts[0].start_time_unix_nano == 1_500_000_000
    assert attempts[1].start_time_unix_nano == (int(started) + 2) * 10**9
    assert attempts[1].end_time_unix_nano - attempts[1].start_time_unix_nano == 3 * 10**9
    assert failed["error.type"] == "timeout" and "error.type" not in ok
    assert attempts[0].status.code == Status.STATUS_CODE_ERROR
    assert (failed["routing.attempt.status"], ok["routing.attempt.status"]) == ("TIMEOUT",
                                                                               "SUCCESS")
    assert (failed["gen_ai.operation.name"], failed["gen_ai.request.model"],
            failed["gen_ai.provider.name"]) == ("chat", d.model, d.provider)
    assert (ok["gen_ai.usage.input_tokens"], ok["gen_ai.usage.output_tokens"]) == (2000, 800)
    assert ok["routing.attempt.index"] == 1 and ok["routing.attempt.fallback"] is True
    assert failed["routing.attempt.cost_micros"] + ok["routing.attempt.cost_micros"] == (
        ack.actual_cost_micros)

    # Resource: our name and version plus what OTEL_RESOURCE_ATTRIBUTES brought.
    for resource in got.resources():
        assert resource["service.name"] == "routing-sidecar"
        assert resource["service.version"] == __version__
        assert resource["deployment.environment"] == "test"
    # Metrics went over OTLP too (flushed on stop).
    assert {"routing.decisions", "routing.decision.duration", "routing.spend",
            "gen_ai.client.token.usage"} <= got.metric_names()

    # The exporter sent the key to the collector, and nothing recorded it or the prompt text.
    assert any(m.get("x-api-key") == SECRET for m in got.metadata)
    wire = got.wire_bytes()
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    for needle in (SECRET, "hunter2", "payroll"):
        assert needle.encode() not in wire
        assert needle not in logged
    # Logs carry the trace id and the decision id.
    (warning,) = [r for r in caplog.records if r.getMessage() == "budget threshold crossed"]
    assert (warning.trace_id, warning.decision_id) == (TRACE_ID, d.decision_id)  # type: ignore[attr-defined]


async def test_untraced_outcome_spans_hang_under_report_outcome(
    tmp_path: Path,
) -> None:
    """A decision routed without tracing gets its attempt spans under ReportOutcome's span,
    laid end to end and ending now when the caller gave no start times."""
    async with otlp_receiver() as (endpoint, got):
        raw = config_dict(tmp_path)
        untraced = Sidecar(parse_config(yaml.safe_dump(raw), "test"))
        await untraced.start()
        try:
            async with grpc.aio.insecure_channel(untraced.address) as ch:
                d = await pb_grpc.RouterStub(ch).Route(route_request("t-untraced"))
        finally:
            await untraced.stop()
        car = Sidecar(traced_config(tmp_path, endpoint))
        await car.start()
        before = time.time_ns()
        try:
            async with grpc.aio.insecure_channel(car.address) as ch:
                await pb_grpc.RouterStub(ch).ReportOutcome(pb.Outcome(
                    decision_id=d.decision_id, attempts=[
                        pb.Attempt(model=d.model, status=pb.ATTEMPT_STATUS_RATE_LIMITED,
                                   duration=Duration(seconds=2)),
                        pb.Attempt(model=d.model, status=pb.ATTEMPT_STATUS_SUCCESS,
                                   duration=Duration(seconds=1)),
                    ]), metadata=traceparent(REPORT_PARENT))
        finally:
            await car.stop()
    spans = got.spans()
    (report,) = by_name(spans, "routing_sidecar.v1.Router/ReportOutcome")
    first, second = sorted((s for s in spans if s.name.startswith("chat ")),
                           key=lambda s: s.start_time_unix_nano)
    assert first.parent_span_id == second.parent_span_id == report.span_id
    assert not first.links
    assert attrs(first.attributes)["error.type"] == "rate_limited"
    assert first.end_time_unix_nano == second.start_time_unix_nano
    assert second.end_time_unix_nano - second.start_time_unix_nano == 10**9
    assert before - 10**9 <= second.start_time_unix_nano <= time.time_ns()


def scrape(address: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def total(samples: list[tuple[dict[str, str], float]], **labels: str) -> float:
    return sum(v for lab, v in samples if all(lab.get(k) == x for k, x in labels.items()))


async def test_metrics_endpoint_counts_decisions_spend_and_tokens(
    sidecar: Sidecar, stub: pb_grpc.RouterStub
) -> None:
    assert sidecar.admin_address and sidecar.admin_address.startswith("127.0.0.1:")
    assert not sidecar.admin_address.endswith(":0")
    decisions = [await stub.Route(route_request(f"m-{i}", project="alpha")) for i in range(3)]
    rejected = await stub.Route(pb.RouteRequest(
        task_id="m-rej", task_type="fix_bug", estimated_input_tokens=2000,
        max_output_tokens=1000, requires=pb.Requirements(capabilities=["teleportation"])))
    assert rejected.status == pb.DECISION_STATUS_REJECTED
    d = decisions[0]
    await stub.ReportOutcome(pb.Outcome(decision_id=d.decision_id, success=True, attempts=[
        pb.Attempt(model=d.model, status=pb.ATTEMPT_STATUS_TRANSIENT_ERROR,
                   duration=Duration(seconds=1), input_tokens=2000, cost_micros=1000),
        pb.Attempt(model=d.fallbacks[0].model, status=pb.ATTEMPT_STATUS_SUCCESS,
                   duration=Duration(seconds=2), input_tokens=2000, output_tokens=500,
                   cost_micros=2500),
    ]))
    m = await asyncio.to_thread(scrape, sidecar.admin_address)

    routed = {"model": d.model, "provider": d.provider, "policy": "code", "status": "routed"}
    assert total(m["routing_decisions_total"], **routed) == 3
    assert total(m["routing_decisions_total"], policy="code", status="rejected") == 1
    assert total(m["routing_decision_duration_seconds_count"], **routed) == 3
    assert total(m["routing_decision_duration_seconds_sum"], **routed) > 0
    fb = d.fallbacks[0]
    assert total(m["routing_spend_usd_total"], model=d.model, provider=d.provider,
                 project="alpha") == pytest.approx(0.001)
    assert total(m["routing_spend_usd_total"], model=fb.model, provider=fb.provider,
                 project="alpha") == pytest.approx(0.0025)
    assert total(m["routing_tokens_total"], model=fb.model, project="alpha", type="output") == 500
    assert total(m["routing_fallbacks_total"], from_model=d.model, model=fb.model,
                 provider=fb.provider) == 1
    assert total(m["gen_ai_client_token_usage_count"], gen_ai_request_model=fb.model,
                 gen_ai_token_type="output", gen_ai_provider_name=fb.provider) == 1
    assert total(m["gen_ai_client_operation_duration_seconds_count"], gen_ai_request_model=d.model,
                 error_type="transient_error") == 1
    # Budgets: utilisation and a one-hot state per scope; providers report healthy for now.
    assert 0 < total(m["routing_budget_utilisation"], scope="project:alpha", period="month") < 1
    assert total(m["routing_budget_state"], scope="global", period="day", state="ok") == 1
    assert total(m["routing_budget_state"], scope="global", period="day", state="alert") == 0
    assert total(m["routing_provider_detection_state"], provider=d.provider, state="healthy") == 1
    assert total(m["routing_provider_breaker_state"], provider=d.provider, state="closed") == 1
    # A duplicate outcome changes nothing.
    await stub.ReportOutcome(pb.Outcome(decision_id=d.decision_id, success=True, attempts=[
        pb.Attempt(model=d.model, status=pb.ATTEMPT_STATUS_SUCCESS, cost_micros=5)]))
    again = await asyncio.to_thread(scrape, sidecar.admin_address)
    assert total(again["routing_spend_usd_total"]) == pytest.approx(0.0035)
    assert "hunter2" not in json.dumps(again)


async def test_a_route_answered_before_the_metrics_pipeline_loads_is_counted(
    cfg: RouterConfig,
) -> None:
    # Tracing off, the metric pipeline loads on the loop's default executor once gRPC serves.
    # Its only thread held busy, the sidecar serves a Route before the pipeline exists.
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    release = threading.Event()
    held = loop.run_in_executor(None, release.wait)
    sidecar = Sidecar(cfg)
    starting = asyncio.create_task(sidecar.start())
    try:
        while sidecar.server is None or not await _serving(sidecar.address):
            assert not starting.done()
            await asyncio.sleep(0.01)
        async with grpc.aio.insecure_channel(sidecar.address) as ch:
            d = await pb_grpc.RouterStub(ch).Route(route_request("early", project="alpha"))
        assert not starting.done() and sidecar.admin_address is None  # still loading
        release.set()
        await held
        await starting
        assert sidecar.admin_address
        with ThreadPoolExecutor(max_workers=1) as scraper:  # /metrics collects on that one
            m = await loop.run_in_executor(scraper, scrape, sidecar.admin_address)
    finally:
        release.set()
        if not starting.done():
            starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await sidecar.stop()
    routed = {"model": d.model, "provider": d.provider, "policy": "code", "status": "routed"}
    assert total(m["routing_decisions_total"], **routed) == 1
    assert total(m["routing_decision_duration_seconds_count"], **routed) == 1
    assert total(m["routing_decision_duration_seconds_sum"], **routed) > 0


async def _serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as ch:
        try:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def test_provider_health_hook_feeds_the_gauges(
    sidecar: Sidecar,
) -> None:
    from routing_sidecar.grpc_api.observe import ProviderHealth

    sidecar.observer.set_provider_health(
        lambda: [ProviderHealth("openai", detection="degraded", breaker="open")])
    assert sidecar.admin_address
    m = await asyncio.to_thread(scrape, sidecar.admin_address)
    assert total(m["routing_provider_detection_state"], provider="openai", state="degraded") == 1
    assert total(m["routing_provider_detection_state"], provider="openai", state="healthy") == 0
    assert total(m["routing_provider_breaker_state"], provider="openai", state="open") == 1
    assert {lab["provider"] for lab, _ in m["routing_provider_breaker_state"]} == {"openai"}


async def test_admin_port_off_and_busy(cfg: RouterConfig, tmp_path: Path) -> None:
    raw: dict[str, Any] = config_dict(tmp_path)
    raw["telemetry"]["admin_listen"] = ""
    off = Sidecar(parse_config(yaml.safe_dump(raw), "test"))
    await off.start()
    try:
        assert off.admin_address is None
    finally:
        await off.stop()
    first = Sidecar(cfg)
    await first.start()
    try:
        assert first.admin_address
        raw["telemetry"]["admin_listen"] = first.admin_address
        busy = Sidecar(parse_config(yaml.safe_dump(raw), "test"))
        try:
            with pytest.raises(OSError, match=r"admin\.listen: cannot bind"):
                await busy.start()
        finally:
            await busy.stop()
    finally:
        await first.stop()


async def test_errors_and_streams_get_their_spans(tmp_path: Path) -> None:
    async with otlp_receiver() as (endpoint, got):
        car = Sidecar(traced_config(tmp_path, endpoint))
        await car.start()
        try:
            async with grpc.aio.insecure_channel(car.address) as ch:
                stub = pb_grpc.RouterStub(ch)
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Route(pb.RouteRequest(task_id="bad", task_type="fix_bug",
                                                     priority=300),
                                     metadata=traceparent(ROUTE_PARENT))

                async def two():  # type: ignore[no-untyped-def]
                    yield route_request("s-1")
                    yield route_request("s-2")

                streamed = [d async for d in stub.RouteStream(
                    two(), metadata=traceparent(ROUTE_PARENT))]
        finally:
            await car.stop()
    spans = got.spans()
    (bad,) = by_name(spans, "routing_sidecar.v1.Router/Route")
    assert attrs(bad.attributes)["rpc.grpc.status_code"] == 3  # INVALID_ARGUMENT
    assert attrs(bad.attributes)["error.type"] == "InvalidArgument"
    assert bad.status.code != Status.STATUS_CODE_ERROR  # the caller's fault, not ours
    (stream,) = by_name(spans, "routing_sidecar.v1.Router/RouteStream")
    decides = by_name(spans, "routing.decide")
    assert [attrs(s.attributes)["routing.decision.id"] for s in decides] == [
        d.decision_id for d in streamed]
    assert all(s.parent_span_id == stream.span_id for s in decides)


async def test_budget_alert_crossings_are_counted(tmp_path: Path) -> None:
    raw = config_dict(tmp_path)
    raw["telemetry"] = {"admin_listen": "127.0.0.1:0"}
    # fix_bug on the cheapest code model costs a few thousand micro-USD: 0.02 USD alerts at
    # 80% within a handful of decisions and is exceeded soon after.
    raw["budgets"] = [{"scope": "project:beta", "period": "day", "limit_usd": 0.02,
                       "alert_at": 0.5, "on_exceed": "reject"}]
    car = Sidecar(parse_config(yaml.safe_dump(raw), "test"))
    await car.start()
    try:
        async with grpc.aio.insecure_channel(car.address) as ch:
            stub = pb_grpc.RouterStub(ch)
            statuses = [(await stub.Route(route_request(f"b-{i}", project="beta"))).status
                        for i in range(30)]
        assert pb.DECISION_STATUS_REJECTED in statuses
        assert car.admin_address
        m = await asyncio.to_thread(scrape, car.admin_address)
        alerts = m["routing_budget_alerts_total"]
        assert total(alerts, scope="project:beta", period="day", state="alert") == 1
        assert total(alerts, scope="project:beta", period="day", state="exceeded") <= 1
    finally:
        await car.stop()


def _duration_points(got: Any) -> list[tuple[int, Any]]:
    """(temporality, data point) of every routing.decision.duration point exported, in order."""
    return [(m.histogram.aggregation_temporality, p)
            for r in got.metrics for rm in r.resource_metrics for sm in rm.scope_metrics
            for m in sm.metrics if m.name == "routing.decision.duration"
            for p in m.histogram.data_points]


@pytest.mark.parametrize("preference", ["cumulative", "delta"])
async def test_the_decision_histogram_reaches_otlp_as_the_exporter_prefers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preference: str,
) -> None:
    """Aggregated in the process (local_histogram.py), the duration histogram is exported with
    the temporality the exporter asks for: every decision in exactly one delta, or counted
    up in each cumulative point; its buckets are the advised ones, under the sidecar's scope."""
    from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

    from routing_sidecar.grpc_api.observe import LATENCY_BUCKETS_S

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", preference)
    async with otlp_receiver() as (endpoint, got):
        car = Sidecar(traced_config(tmp_path, endpoint))
        await car.start()
        try:
            async with grpc.aio.insecure_channel(car.address) as ch:
                stub = pb_grpc.RouterStub(ch)
                for i in range(2):
                    await stub.Route(route_request(f"h-{i}"))
                # On a thread: the receiver answering the export runs on this loop.
                provider: Any = car.telemetry.meter_provider  # type: ignore[union-attr]
                assert await asyncio.to_thread(provider.force_flush)
                await stub.Route(route_request("h-2"))
        finally:
            await car.stop()  # flushes the last window
    points = _duration_points(got)
    assert len(points) >= 2
    want = (AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA if preference == "delta"
            else AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE)
    assert {t for t, _ in points} == {want}
    counts = [p.count for _, p in points]
    if preference == "delta":
        assert sum(counts) == 3 and counts[0] == 2
    else:
        assert counts[0] == 2 and counts[-1] == 3
        assert len({p.start_time_unix_nano for _, p in points}) == 1
    for _, p in points:
        assert list(p.explicit_bounds) == list(LATENCY_BUCKETS_S)
        assert sum(p.bucket_counts) == p.count and p.sum > 0 and 0 < p.min <= p.max
        assert attrs(p.attributes)["status"] == "routed"
    scopes = {sm.scope.name for r in got.metrics for rm in r.resource_metrics
              for sm in rm.scope_metrics
              if any(m.name == "routing.decision.duration" for m in sm.metrics)}
    assert scopes == {"routing_sidecar"}
