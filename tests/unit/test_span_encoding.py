"""Span batches built in place encode to exactly the bytes of the OTLP exporter's own encoder."""

from __future__ import annotations

import logging
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import (
    encode_spans as library_encode_spans,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from routing_sidecar import span_encoding
from routing_sidecar.span_encoding import encode_spans

_RESOURCES = (
    Resource({"service.name": "routing-sidecar", "host.name": "a"}),
    Resource({"service.name": "routing-sidecar", "host.name": "a"}),  # equal, not the same
    Resource({"service.name": "other"}, schema_url="https://opentelemetry.io/schemas/1.2.0"),
)
_SCOPES = (
    None,
    InstrumentationScope("routing_sidecar", "1.0"),
    InstrumentationScope("routing_sidecar", "1.0"),
    InstrumentationScope("other", None, "https://example.test/schema", {"k": "v"}),
)
_text = st.text(max_size=12)
_scalar = st.one_of(_text, st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False))
_value = st.one_of(
    _scalar,
    st.lists(_text, max_size=3).map(tuple), st.lists(st.booleans(), max_size=3).map(tuple),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3).map(tuple),
    st.lists(st.floats(allow_nan=False), max_size=3).map(tuple),
)
_attributes = st.dictionaries(_text, _value, max_size=6)
_ids = st.integers(1, 2**64 - 1)
_state = st.lists(st.tuples(st.from_regex(r"\A[a-z][a-z0-9]{0,5}\Z"),
                            st.from_regex(r"\A[a-z0-9]{1,6}\Z")),
                  max_size=2, unique_by=lambda t: t[0])


@st.composite
def _contexts(draw: Any) -> SpanContext:
    return SpanContext(draw(st.integers(1, 2**128 - 1)), draw(_ids), draw(st.booleans()),
                       TraceFlags(draw(st.sampled_from([0, 1]))), TraceState(draw(_state)))


@st.composite
def _spans(draw: Any) -> ReadableSpan:
    code = draw(st.sampled_from(list(StatusCode)))
    description = draw(st.none() | _text) if code is StatusCode.ERROR else None
    start = draw(st.none() | st.integers(0, 2**63 - 1))
    return ReadableSpan(
        name=draw(_text),
        context=draw(_contexts()),
        parent=draw(st.none() | _contexts()),
        resource=draw(st.sampled_from(_RESOURCES)),
        attributes=draw(_attributes),
        events=draw(st.lists(st.builds(Event, _text, _attributes, st.integers(0, 2**63 - 1)),
                             max_size=2)),
        links=draw(st.lists(st.builds(Link, _contexts(), _attributes), max_size=2)),
        kind=draw(st.sampled_from(list(SpanKind))),
        status=Status(code, description),
        start_time=start,
        end_time=None if start is None else draw(st.none() | st.integers(start, 2**63 - 1)),
        instrumentation_scope=draw(st.sampled_from(_SCOPES)),
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(_spans(), max_size=6))
def test_a_batch_encodes_to_the_library_bytes(spans: list[ReadableSpan]) -> None:
    logging.disable(logging.ERROR)  # both encoders log each int they cannot encode
    try:
        ours, theirs = encode_spans(spans), library_encode_spans(spans)
    finally:
        logging.disable(logging.NOTSET)
    assert ours == theirs
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True)


def test_a_route_span_encodes_to_the_library_bytes() -> None:
    """The shape the sidecar exports most: a server span with the decision's attributes."""
    parent = SpanContext(7, 8, is_remote=True, trace_flags=TraceFlags(1))
    span = ReadableSpan(
        "routing_sidecar.v1.Router/Route", SpanContext(1, 2, False, TraceFlags(1)), parent,
        _RESOURCES[0],
        {"rpc.system": "grpc", "routing.decision.id": "019a", "routing.dry_run": False,
         "routing.estimated_cost_micros": 1200, "routing.candidates": 5,
         "routing.rejected.models": ("m1", "m2"), "rpc.grpc.status_code": 0},
        kind=SpanKind.SERVER, status=Status(StatusCode.UNSET), start_time=10, end_time=20,
        instrumentation_scope=_SCOPES[1],
    )
    ours = encode_spans([span, span])
    assert ours.SerializeToString() == library_encode_spans([span, span]).SerializeToString()
    spans = ours.resource_spans[0].scope_spans[0].spans
    assert len(spans) == 2 and spans[0].parent_span_id == (8).to_bytes(8, "big")


def test_an_int_past_64_bits_is_left_out_as_the_library_leaves_it(caplog: Any) -> None:
    span = ReadableSpan("s", SpanContext(1, 2, False), attributes={"big": 2**64, "ok": 1},
                        resource=_RESOURCES[0])
    with caplog.at_level(logging.ERROR):
        attrs = encode_spans([span]).resource_spans[0].scope_spans[0].spans[0].attributes
    assert [a.key for a in attrs] == ["ok"]
    assert "big" in caplog.text


def test_repeated_attributes_come_from_the_cache_as_the_same_bytes() -> None:
    """Entries are cached by key, type and value: True is not 1, nor 0.0 a cached -0.0."""
    def span(attributes: dict[str, Any]) -> ReadableSpan:
        return ReadableSpan("s", SpanContext(1, 2, False), attributes=attributes,
                            resource=_RESOURCES[0])

    batch = [span({"k": True, "f": -0.0, "a": ("x", "y")}), span({"k": 1, "f": 0.0, "a": ()}),
             span({"k": "1", "f": 0.0, "a": ("x", "y")}), span({"k": True, "f": -0.0})]
    first = encode_spans(batch).SerializeToString()
    assert first == library_encode_spans(batch).SerializeToString()
    assert encode_spans(batch).SerializeToString() == first  # now every entry a cache hit
    assert ("k", bool, True) in span_encoding._ENCODED
    assert not any(kind is float for _, kind, _ in span_encoding._ENCODED)


def test_the_cache_starts_again_when_full() -> None:
    spans = [ReadableSpan("s", SpanContext(1, 2, False), attributes={"id": f"d{i}"},
                          resource=_RESOURCES[0]) for i in range(span_encoding._CACHE_MAX + 10)]
    assert encode_spans(spans) == library_encode_spans(spans)
    assert 0 < len(span_encoding._ENCODED) <= span_encoding._CACHE_MAX
