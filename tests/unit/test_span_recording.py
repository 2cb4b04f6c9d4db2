"""LeanTracer's spans are the SDK tracer's spans: the same exported bytes, script by script."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from routing_sidecar.span_recording import LeanSpan, LeanTracer

T0 = 1_700_000_000_000_000_000


class CountingIds(IdGenerator):
    """Ids 1, 2, 3, ...: two providers given one each hand out the same ids in step."""

    def __init__(self) -> None:
        self._next: Iterator[int] = itertools.count(1)

    def generate_span_id(self) -> int:
        return next(self._next)

    def is_trace_id_random(self) -> bool:
        return True  # as the SDK's default generator says: root spans carry the W3C flag

    def generate_trace_id(self) -> int:
        n = next(self._next)  # low bits spread, for the ratio sampler, which reads them
        return n << 64 | (n * 0x9E3779B97F4A7C15) & (2**64 - 1)


Script = Callable[[trace.Tracer], None]


def _run(script: Script, lean: bool, limits: SpanLimits | None = None,
         sampler: Sampler | None = None) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    limits = limits or SpanLimits()
    provider = TracerProvider(resource=Resource.create({"service.name": "t"}), sampler=sampler,
                              id_generator=CountingIds(), span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer: trace.Tracer = provider.get_tracer("routing-sidecar", "9.9")
    if lean:
        tracer = LeanTracer(tracer, limits)  # type: ignore[arg-type]
    script(tracer)
    return list(exporter.get_finished_spans())


def _same(script: Script, **kwargs: object) -> list[ReadableSpan]:
    """Run `script` on both tracers; the exported requests must match byte for byte."""
    sdk, lean = _run(script, False, **kwargs), _run(script, True, **kwargs)  # type: ignore[arg-type]
    assert [s.name for s in lean] == [s.name for s in sdk]
    assert _wire(lean) == _wire(sdk)
    for a, b in zip(lean, sdk, strict=True):
        assert dict(a.attributes or {}) == dict(b.attributes or {})
        assert list(a.attributes or {}) == list(b.attributes or {})  # the same order
        assert (a.dropped_attributes, a.dropped_events) == (b.dropped_attributes,
                                                            b.dropped_events)
        assert a.instrumentation_scope == b.instrumentation_scope
        assert (a.context, a.parent) == (b.context, b.parent)  # trace flags included
    return lean


def _wire(spans: list[ReadableSpan]) -> bytes:
    """The export request's bytes, without the clock's readings (a span ended on exit, an
    exception recorded there) or an exception's stack (whose frames name each tracer's code)."""
    for span in spans:
        for event in span.events:
            if event.name == "exception":
                assert "Traceback" in str(event.attributes["exception.stacktrace"])
    normal = [ReadableSpan(
        s.name, s.context, s.parent, s.resource, s.attributes,
        [Event(e.name, {k: v for k, v in e.attributes.items() if k != "exception.stacktrace"},
               e.timestamp if e.name != "exception" or e.timestamp == T0 + 1 else T0)
         for e in s.events],
        s.links, s.kind, status=s.status, start_time=s.start_time,
        end_time=s.end_time if (s.end_time or 0) < T0 + 100 else T0 + 100,
        instrumentation_scope=s.instrumentation_scope) for s in spans]
    return encode_spans(normal).SerializeToString()


def _route_like(tracer: trace.Tracer) -> None:
    span = tracer.start_span("Router/Route", kind=SpanKind.SERVER, start_time=T0,
                             attributes={"rpc.system": "grpc", "rpc.method": "Route"})
    with trace.use_span(span, end_on_exit=False):
        child = tracer.start_span("routing.decide", start_time=T0 + 1)
        child.end(end_time=T0 + 2)
    span.set_attributes({
        "routing.decision.id": "01ab", "routing.dry_run": False, "routing.cost": 19500,
        "routing.score": 0.73, "routing.rejected.models": ["a", "b"],
        "routing.rejected.rejections": ("outscored", "budget"), "rpc.method": "Route2",
    })
    span.set_attribute("rpc.system", "grpc")  # set again: moves to the end
    span.set_attribute("routing.empty", [])
    span.add_event("routing.budget.alert", {"routing.budget.scope": "global", "n": 3},
                   timestamp=T0 + 3)
    span.set_status(Status(StatusCode.ERROR, "Unavailable"))
    span.end(end_time=T0 + 4)
    span.set_attribute("after.end", "ignored")
    span.end(end_time=T0 + 5)


def _odd_values(tracer: trace.Tracer) -> None:
    span = tracer.start_span("odd", start_time=T0)
    span.set_attributes({"ints": (1, 2, 3), "mixed": [1, "a"], "none": None, "": "no key",
                         "bytes": b"raw", "nested": {"k": "v"}, "obj": object()})
    span.set_attribute("after.slow", "plain again")
    span.set_attribute("floats", [1.5, 2.5])
    span.end(end_time=T0 + 1)


def _statuses(tracer: trace.Tracer) -> None:
    for i, steps in enumerate((
        [(StatusCode.OK, None), (StatusCode.ERROR, "late")],
        [(StatusCode.ERROR, "first"), (StatusCode.UNSET, None)],
        [(Status(StatusCode.UNSET), None), (Status(StatusCode.ERROR, "x"), "ignored")],
    )):
        span = tracer.start_span(f"s{i}", start_time=T0)
        for status, description in steps:
            span.set_status(status, description)
        span.update_name(f"renamed{i}")
        span.end(end_time=T0 + 1)


def _exceptions(tracer: trace.Tracer) -> None:
    with (pytest.raises(ValueError, match="boom"),
          tracer.start_as_current_span("managed", start_time=T0) as span):
        assert trace.get_current_span() is span
        raise ValueError("boom")
    span = tracer.start_span("quiet", start_time=T0, record_exception=False,
                             set_status_on_exception=False)
    with pytest.raises(KeyError), span:
        raise KeyError("k")
    other = tracer.start_span("recorded", start_time=T0)
    try:
        raise RuntimeError("kept")
    except RuntimeError as exc:
        other.record_exception(exc, {"extra": 1}, timestamp=T0 + 1)
    other.end(end_time=T0 + 2)


def _remote_parent(tracer: trace.Tracer) -> None:
    for flags in (TraceFlags.SAMPLED, TraceFlags.DEFAULT):
        parent = SpanContext(0xABC << 64, 0xDEF, is_remote=True, trace_flags=TraceFlags(flags))
        ctx = trace.set_span_in_context(NonRecordingSpan(parent))
        tracer.start_span("continued", ctx, kind=SpanKind.SERVER, start_time=T0).end(T0 + 1)


@pytest.mark.parametrize("script", [_route_like, _odd_values, _statuses, _exceptions,
                                    _remote_parent])
def test_each_script_exports_what_the_sdk_tracer_exports(script: Script) -> None:
    spans = _same(script)
    assert spans


def test_the_route_script_takes_the_plain_path_and_ends_once() -> None:
    spans = _same(_route_like)
    route = spans[-1]
    assert list(route.attributes or {})[-2:] == ["rpc.system", "routing.empty"]
    assert route.attributes["routing.rejected.models"] == ("a", "b")  # type: ignore[index]
    assert spans[0].parent == route.context  # the child joined the current span
    assert len(spans) == 2  # the second end() exported nothing


def test_limits_drop_and_truncate_as_the_sdk_does() -> None:
    limits = SpanLimits(max_span_attributes=3, max_span_attribute_length=4, max_events=1,
                        max_event_attributes=1)

    def script(tracer: trace.Tracer) -> None:
        span = tracer.start_span("limited", start_time=T0, attributes={"a": "long value"})
        span.set_attributes({"b": 1, "c": ["xy", "toolong"], "d": True, "e": "ok"})
        span.set_attribute("b", 2)
        span.add_event("one", {"x": 1, "y": 2}, timestamp=T0)
        span.add_event("two", timestamp=T0)
        span.end(end_time=T0 + 1)

    (span,) = _same(script, limits=limits)
    assert span.dropped_attributes == 3  # a and c to make room, then d for b set again
    assert span.dropped_events == 1


def test_sampling_follows_the_sdk_sampler() -> None:
    def script(tracer: trace.Tracer) -> None:
        for i in range(20):
            span = tracer.start_span(f"r{i}", start_time=T0)
            assert isinstance(span, LeanSpan | NonRecordingSpan) or not isinstance(
                tracer, LeanTracer)
            span.end(end_time=T0 + 1)

    assert _same(script, sampler=ALWAYS_OFF) == []
    kept = _same(script, sampler=ParentBased(TraceIdRatioBased(0.5)))
    assert 0 < len(kept) < 20


def test_a_span_with_links_is_the_sdk_tracers_own() -> None:
    def script(tracer: trace.Tracer) -> None:
        link = Link(SpanContext(5 << 64, 6, is_remote=True), {"why": "batch"})
        tracer.start_span("linked", links=[link], start_time=T0).end(end_time=T0 + 1)

    (span,) = _same(script)
    assert len(span.links) == 1
