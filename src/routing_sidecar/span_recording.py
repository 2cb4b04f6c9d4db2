"""Spans recorded for the SDK's processors without the SDK's per-span machinery.

The SDK's `Tracer.start_span` builds a `Span` with a lock, a `BoundedAttributes` with a lock
of its own, bounded lists for events and links, and cleans every attribute value it is given,
recursively, under those locks. On a Route that is most of what tracing costs the request's
own thread: measured in one process (the servicer's steps without the transport), tracing
added about 125 µs of main-thread CPU per Route, of which the span's own bookkeeping was
most. A Route's attributes are a score of strings and numbers built by the sidecar itself.

`LeanTracer` makes the same spans with less: the SDK tracer's own sampler, id generator,
resource, scope and span processors; a plain dict of attributes where a value of a plain type
(str, bool, int, float, or a list or tuple of str) is stored as the SDK would store it, and
any other value goes through the SDK's `BoundedAttributes` to be cleaned exactly as there;
events and their attributes through the SDK's own classes. What a processor receives at the
end is the SDK's `ReadableSpan`, field for field what the SDK would have built
(tests/unit/test_span_recording.py compares the two). Spans with links, or past the
attribute limit, take the SDK's own path or its own container.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

_logger = logging.getLogger(__name__)
_PLAIN = frozenset({bool, int, float})
_UNSET = Status(StatusCode.UNSET)


class LeanTracer(trace_api.Tracer):
    """An SDK tracer's spans, made as `LeanSpan`s (links: the SDK tracer's own spans)."""

    def __init__(self, sdk: SdkTracer, limits: SpanLimits) -> None:
        self.sdk = sdk
        self._limits = limits
        info = sdk.instrumentation_info
        self.scope = InstrumentationScope(info.name, info.version, info.schema_url)

    def start_span(
        self, name: str, context: Context | None = None, kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None, links: Sequence[Link] | None = (),
        start_time: int | None = None, record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace_api.Span:
        """A span as the SDK tracer would start it (sampled by its sampler)."""
        if links:
            return self.sdk.start_span(name, context, kind, attributes, links, start_time,
                                        record_exception, set_status_on_exception)
        sdk = self.sdk
        parent: SpanContext | None = trace_api.get_current_span(context).get_span_context()
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = sdk.id_generator.generate_trace_id()
            random_id = sdk.id_generator.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            random_id = parent.trace_flags.random_trace_id
        sampled = sdk.sampler.should_sample(context, trace_id, name, kind, attributes, ())
        decision = sampled.decision
        flags = (TraceFlags.SAMPLED if decision is Decision.RECORD_AND_SAMPLE
                 else TraceFlags.DEFAULT)
        if random_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        span_context = SpanContext(trace_id, sdk.id_generator.generate_span_id(),
                                   is_remote=False, trace_flags=TraceFlags(flags),
                                   trace_state=sampled.trace_state)
        if decision is Decision.DROP:
            return trace_api.NonRecordingSpan(span_context)
        span = LeanSpan(self, name, span_context, parent, kind, self._limits,
                        record_exception, set_status_on_exception)
        if sampled.attributes:
            span.set_attributes(sampled.attributes)
        span.start(start_time, context)
        return span

    @contextmanager  # the API's own decorator is private
    def start_as_current_span(  # type: ignore[override]
        self, name: str, context: Context | None = None, kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None, links: Sequence[Link] | None = (),
        start_time: int | None = None, record_exception: bool = True,
        set_status_on_exception: bool = True, end_on_exit: bool = True,
    ) -> Iterator[trace_api.Span]:
        """As the SDK's: a new span, current until the block ends."""
        span = self.start_span(name, context, kind, attributes, links, start_time,
                               record_exception, set_status_on_exception)
        with trace_api.use_span(span, end_on_exit=end_on_exit,
                                record_exception=record_exception,
                                set_status_on_exception=set_status_on_exception) as current:
            yield current


class LeanSpan(trace_api.Span):
    """A recording span whose attributes are a dict; ended, a `ReadableSpan` for processors."""

    __slots__ = ("_attributes", "_context", "_end_time", "_events", "_kind", "_limits",
                 "_name", "_parent", "_record_exception", "_set_status_on_exception",
                 "_start_time", "_status", "_tracer")

    def __init__(self, tracer: LeanTracer, name: str, context: SpanContext,
                 parent: SpanContext | None, kind: SpanKind, limits: SpanLimits,
                 record_exception: bool, set_status_on_exception: bool) -> None:
        self._tracer = tracer
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._limits = limits
        self._record_exception = record_exception
        self._set_status_on_exception = set_status_on_exception
        self._attributes: dict[str, types.AnyValue] | BoundedAttributes = {}
        self._events: BoundedList[Event] | None = None
        self._status = _UNSET
        self._start_time: int | None = None
        self._end_time: int | None = None

    def start(self, start_time: int | None, parent_context: Context | None) -> None:
        """Stamp the start and tell the processors, as the SDK span does."""
        self._start_time = start_time if start_time is not None else time.time_ns()
        self._tracer.sdk.span_processor.on_start(self, parent_context=parent_context)  # type: ignore[arg-type]

    def get_span_context(self) -> SpanContext:
        """The span's ids and flags."""
        return self._context

    def is_recording(self) -> bool:
        """True until ended."""
        return self._end_time is None

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        """Set each attribute, in order (as `set_attribute` does, in one pass)."""
        attrs = self._attributes
        limit = self._limits.max_span_attributes
        if (self._end_time is not None or type(attrs) is not dict
                or (limit is not None and len(attrs) + len(attributes) > limit)):
            for key, value in attributes.items():
                self.set_attribute(key, value)
            return
        max_len = self._limits.max_span_attribute_length
        for key, value in attributes.items():  # under the limit: no key can be dropped
            plain = _plain(value, max_len) if type(key) is str and key else None
            if plain is None or attrs is not self._attributes:
                self.set_attribute(key, value)  # cleaned by the SDK's container from here
                continue
            if key in attrs:
                del attrs[key]  # set again, it moves to the end, as in the SDK's
            attrs[key] = plain

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        """Store `value`, cleaned as the SDK cleans it (plain values are stored as they are)."""
        if self._end_time is not None:
            _logger.warning("Setting attribute on ended span.")
            return
        attrs = self._attributes
        if type(attrs) is dict:
            limit = self._limits.max_span_attributes
            plain = (_plain(value, self._limits.max_span_attribute_length)
                     if type(key) is str and key else None)
            if plain is not None and (key in attrs or limit is None or len(attrs) < limit):
                attrs.pop(key, None)  # set again, it moves to the end, as in the SDK's
                attrs[key] = plain
                return
            attrs = self._bounded(attrs)
        attrs[key] = value

    def _bounded(self, attrs: Mapping[str, types.AnyValue]) -> BoundedAttributes:
        """From here on the SDK's own container (a value it must clean, or the limit reached)."""
        bounded = BoundedAttributes(self._limits.max_span_attributes, attrs, immutable=False,
                                    max_value_len=self._limits.max_span_attribute_length)
        self._attributes = bounded
        return bounded

    def add_event(self, name: str, attributes: types.Attributes = None,
                  timestamp: int | None = None) -> None:
        """An event, its attributes cleaned and bounded by the SDK's classes."""
        if self._end_time is not None:
            _logger.warning("Tried calling _add_event on an ended span.")
            return
        if self._events is None:
            self._events = BoundedList(self._limits.max_events)
        self._events.append(Event(name, BoundedAttributes(
            self._limits.max_event_attributes, attributes, immutable=True,
            max_value_len=self._limits.max_attribute_length), timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        """Not kept: links are given at the start (such spans are the SDK's own)."""
        _logger.warning("links added after the start are not recorded on this span")

    def update_name(self, name: str) -> None:
        """Rename the span."""
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """As the SDK: OK is final, UNSET is ignored, a Status takes no separate description."""
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is not StatusCode.UNSET:
                self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(self, exception: BaseException, attributes: types.Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        """The exception as an `exception` event, with the SDK's attribute names."""
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        event: dict[str, types.AnyValue] = {
            "exception.type": (f"{module}.{qualname}" if module and module != "builtins"
                               else qualname),
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            event.update(attributes)
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        """Stamp the end and hand the processors the finished span (once)."""
        if self._end_time is not None:
            _logger.warning("Calling end() on an ended span.")
            return
        self._end_time = end_time if end_time is not None else time.time_ns()
        tracer = self._tracer
        sdk = tracer.sdk
        sdk.span_processor.on_end(ReadableSpan(
            name=self._name, context=self._context, parent=self._parent,
            resource=sdk.resource, attributes=self._attributes, events=self._events or (),
            kind=self._kind, status=self._status, start_time=self._start_time,
            end_time=self._end_time, instrumentation_info=sdk.instrumentation_info,
            instrumentation_scope=tracer.scope))

    def __exit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                 exc_tb: TracebackType | None) -> None:
        """Record an escaping exception and its status, as the SDK span does, then end."""
        if exc_val is not None and self.is_recording():
            if self._record_exception:
                self.record_exception(exc_val, escaped=True)
            if self._set_status_on_exception:
                self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        super().__exit__(exc_type, exc_val, exc_tb)


def _plain(value: Any, max_len: int | None) -> Any:
    """`value` as the SDK would store it when it is a plain value or a list of str, else None."""
    kind = type(value)
    if kind is str:
        return value if max_len is None or len(value) <= max_len else None
    if kind in _PLAIN:
        return value
    if (kind is list or kind is tuple) and all(
            type(v) is str and (max_len is None or len(v) <= max_len) for v in value):
        return tuple(value)
    return None
