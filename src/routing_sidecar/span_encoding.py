"""OTLP span batches built in place: the exporter's own bytes, for a third of the work.

The OTLP exporters' encoder (`encode_spans` in opentelemetry-exporter-otlp-proto-common) makes
every attribute value, attribute, span and group a message of its own and hands it to its
parent's constructor. The upb protobuf runtime copies a message handed over that way by
serialising and parsing it, so each span of a batch is encoded three or four times over:
with a Route span's twenty attributes, some 70 µs a span on the exporter's thread, holding
the interpreter the Routes need. `encode_spans` here builds each message where it lives
(`add()` and field stores), once. Events, links and resources, rare or once per batch, still
go through the library's own functions; the result is the same message, field for field
(tests/unit/test_span_encoding.py compares the bytes with the library's).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_instrumentation_scope,
    _encode_key_value,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import (
    _SPAN_KIND_MAP,
    _encode_events,
    _encode_links,
    _encode_trace_state,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, SpanFlags
from opentelemetry.sdk.trace import ReadableSpan

_logger = logging.getLogger(__name__)
_HAS_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _set_str(out: Any, value: str) -> None:
    out.string_value = value


def _set_bool(out: Any, value: bool) -> None:
    out.bool_value = value


def _set_int(out: Any, value: int) -> None:
    out.int_value = value


def _set_float(out: Any, value: float) -> None:
    out.double_value = value


_SCALARS: dict[type, Any] = {str: _set_str, bool: _set_bool, int: _set_int, float: _set_float}


# Array elements stored directly (the SDK keeps arrays to one type; ints may overflow, so they
# take the library's path, which drops what it cannot encode).
_ARRAY_KINDS: dict[type, Any] = {str: _set_str, bool: _set_bool, float: _set_float}


def encode_spans(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """The export request for a batch: spans grouped by resource, then by scope, in order."""
    request = ExportTraceServiceRequest()
    by_resource: dict[Any, tuple[ResourceSpans, dict[Any, ScopeSpans]]] = {}
    last_resource: Any = None
    last_scope: Any = None
    group: Any = None
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope or None
        # Spans of one batch nearly always share both objects: hash them (a Resource hashes
        # its attributes as JSON) only when they change.
        if group is None or resource is not last_resource or scope is not last_scope:
            group = _group(request, by_resource, resource, scope)
            last_resource, last_scope = resource, scope
        _fill_span(group.spans.add(), span)
    return request


def _group(request: ExportTraceServiceRequest,
           by_resource: dict[Any, tuple[ResourceSpans, dict[Any, ScopeSpans]]],
           resource: Any, scope: Any) -> ScopeSpans:
    """The ScopeSpans a span of this resource and scope goes in, made when first met."""
    entry = by_resource.get(resource)
    if entry is None:
        rs = request.resource_spans.add()
        rs.resource.CopyFrom(_encode_resource(resource))
        if resource.schema_url:
            rs.schema_url = resource.schema_url
        entry = by_resource[resource] = (rs, {})
    rs, scopes = entry
    ss = scopes.get(scope)
    if ss is None:
        ss = scopes[scope] = rs.scope_spans.add()
        ss.scope.CopyFrom(_encode_instrumentation_scope(scope))
        if scope is not None and scope.schema_url:
            ss.schema_url = scope.schema_url
    return ss


def _fill_span(out: Any, span: ReadableSpan) -> None:
    """One span's fields, as the library's `_encode_span` sets them."""
    ctx = span.get_span_context()
    assert ctx is not None  # every span the SDK ends has its context
    out.trace_id = ctx.trace_id.to_bytes(16, "big")
    out.span_id = ctx.span_id.to_bytes(8, "big")
    trace_state = _encode_trace_state(ctx.trace_state)
    if trace_state:
        out.trace_state = trace_state
    parent = span.parent
    if parent is not None:
        out.parent_span_id = parent.span_id.to_bytes(8, "big")
    out.name = span.name
    out.kind = _SPAN_KIND_MAP[span.kind]
    if span.start_time is not None:
        out.start_time_unix_nano = span.start_time
    if span.end_time is not None:
        out.end_time_unix_nano = span.end_time
    if span.attributes:
        _fill_attributes(out.attributes, span.attributes)
    if span.events:
        out.events.extend(_encode_events(span.events) or ())
    if span.links:
        out.links.extend(_encode_links(span.links) or ())
    status = span.status
    if status is not None:  # a field stored makes it present, as the library's Status(...) is
        out.status.code = status.status_code.value
        if status.description:
            out.status.message = status.description
    out.dropped_attributes_count = span.dropped_attributes
    out.dropped_events_count = span.dropped_events
    out.dropped_links_count = span.dropped_links
    out.flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)


def _fill_attributes(out: Any, attributes: Mapping[str, Any]) -> None:
    """Scalars stored directly; the rest through the library, which drops what it cannot encode."""
    for key, value in attributes.items():
        kind = type(value)
        scalar = _SCALARS.get(kind)
        if scalar is not None and (kind is not int or _INT64_MIN <= value <= _INT64_MAX):
            kv = out.add()
            kv.key = key
            scalar(kv.value, value)
        elif (kind is tuple or kind is list) and all(type(v) in _ARRAY_KINDS for v in value):
            kv = out.add()
            kv.key = key
            values = kv.value.array_value.values
            values.extend(())  # an empty sequence is an empty array, present, as the library's
            for v in value:
                _ARRAY_KINDS[type(v)](values.add(), v)
        else:
            try:
                encoded = _encode_key_value(key, value)
            except Exception as exc:  # as the library does: one bad attribute, not the batch
                _logger.exception("Failed to encode key %s: %s", key, exc)
                continue
            out.append(encoded)
