"""The Router's spans: attribute names, the SERVER span of an RPC, a decision as attributes.

Names are documented in docs/telemetry.md: keep that table in step with the constants below.
"""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    format_span_id,
    format_trace_id,
)
from opentelemetry.util.types import AttributeValue

from routing_sidecar import domain
from routing_sidecar.grpc_api.status import code_for
from routing_sidecar.records import DecisionRecord
from routing_sidecar.service.routing import NO_TRACE, TraceIds

# GenAI semantic conventions (https://opentelemetry.io/docs/specs/semconv/gen-ai/).
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_TOKEN_TYPE = "gen_ai.token.type"  # noqa: S105 - an attribute name
ERROR_TYPE = "error.type"
# The orchestrator reports calls, not their kind; "chat" is the GenAI conventions' default.
OPERATION = "chat"

# RPC server spans (https://opentelemetry.io/docs/specs/semconv/rpc/grpc/).
RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"
ROUTER_SERVICE = "routing_sidecar.v1.Router"
# Status codes that are the server's fault: only these mark a server span as an error.
_SERVER_FAULTS = frozenset({2, 4, 12, 13, 14, 15})  # UNKNOWN, DEADLINE_EXCEEDED, ...
_CANCELLED = 1

# Route span attributes and the rejected-candidate event.
DECISION_ID = "routing.decision.id"
TASK_ID = "routing.task.id"
TASK_TYPE = "routing.task.type"
POLICY = "routing.policy"
OBJECTIVE = "routing.objective"
STATUS = "routing.status"
REASON_CODE = "routing.reason_code"
REASON = "routing.reason"
DRY_RUN = "routing.dry_run"
ESTIMATED_COST = "routing.estimated_cost_micros"
CANDIDATES = "routing.candidates"
FALLBACKS = "routing.fallbacks"
# The candidates neither chosen nor kept as fallbacks, as two parallel arrays (one event per
# candidate cost more than the rest of the span to record and to export; the sentences are on
# the Decision and in its audit row).
REJECTED_MODELS = "routing.rejected.models"
REJECTIONS = "routing.rejected.rejections"
# Response cache: "hit" or "miss" when the request was looked up, and a hit's source.
CACHE_RESULT = "routing.cache.result"
CACHE_SOURCE = "routing.cache.source_decision_id"
# ReportOutcome span and attempt spans.
ATTEMPTS = "routing.attempts"
ACTUAL_COST = "routing.actual_cost_micros"
DUPLICATE = "routing.duplicate"
ATTEMPT_INDEX = "routing.attempt.index"
ATTEMPT_STATUS = "routing.attempt.status"
ATTEMPT_COST = "routing.attempt.cost_micros"
ATTEMPT_ESTIMATED_COST = "routing.attempt.estimated_cost_micros"
ATTEMPT_FALLBACK = "routing.attempt.fallback"
ATTEMPT_OFF_PLAN = "routing.attempt.off_plan"

# Candidates that were kept: everything else is a rejection worth an event.
_KEPT = frozenset({domain.Rejection.CHOSEN, domain.Rejection.FALLBACK})
# Decision latency is sub-millisecond to a few milliseconds: the default buckets are too coarse.


def trace_ids_of(span: Span) -> TraceIds:
    """The span's ids when it is sampled (so attempt spans can join its trace), else none."""
    ctx = span.get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return NO_TRACE
    return TraceIds(format_trace_id(ctx.trace_id), format_span_id(ctx.span_id))


def parent_context(record: DecisionRecord) -> Context | None:
    """A context whose span is the decision's stored span, remote; None without stored ids."""
    if not record.trace_id or not record.span_id:
        return None
    try:
        ctx = SpanContext(int(record.trace_id, 16), int(record.span_id, 16), is_remote=True,
                          trace_flags=TraceFlags(TraceFlags.SAMPLED))
    except ValueError:
        return None
    return trace.set_span_in_context(NonRecordingSpan(ctx)) if ctx.is_valid else None


class _MetadataGetter(Getter[Any]):
    """Reads propagation headers from gRPC invocation metadata: (key, value) pairs."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        values = [v for k, v in carrier if k == key and isinstance(v, str)]
        return values or None

    def keys(self, carrier: Any) -> list[str]:
        return [k for k, _ in carrier]


_METADATA = _MetadataGetter()


class ServerSpan:
    """Starts the SERVER span on enter (current until exit); sets the gRPC status on exit."""

    __slots__ = ("_grpc_context", "_method", "_span", "_token", "_tracer")

    def __init__(self, tracer: Tracer, method: str, grpc_context: Any) -> None:
        self._tracer = tracer
        self._method = method
        self._grpc_context = grpc_context

    def __enter__(self) -> Span:
        metadata = self._grpc_context.invocation_metadata()
        parent = propagate.extract(metadata, getter=_METADATA) if metadata else None
        span = self._tracer.start_span(
            f"{ROUTER_SERVICE}/{self._method}", context=parent, kind=SpanKind.SERVER,
            attributes={RPC_SYSTEM: "grpc", RPC_SERVICE: ROUTER_SERVICE,
                        RPC_METHOD: self._method},
        )
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span, parent))
        return span

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        otel_context.detach(self._token)
        span = self._span
        if exc is None:
            code = 0
        elif isinstance(exc, asyncio.CancelledError):
            code = _CANCELLED
        else:
            code = code_for(exc).value[0]
        span.set_attribute(RPC_GRPC_STATUS_CODE, code)
        if code in _SERVER_FAULTS:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        elif exc is not None:
            span.set_attribute(ERROR_TYPE, type(exc).__name__)
        span.end()


def describe_decision(span: Span, task: domain.Task, decision: domain.Decision) -> None:
    """The decision as attributes, in one call, rejected candidates included.

    Kept lean on purpose: every attribute costs on the Route path and again when the batch
    is encoded. The chain's models, tiers and scores are in the audit row (decision id).
    """
    sel = decision.selection
    chosen = sel.chosen
    attrs: dict[str, AttributeValue] = {
        DECISION_ID: decision.decision_id,
        TASK_ID: task.task_id,
        TASK_TYPE: task.task_type,
        POLICY: sel.policy,
        OBJECTIVE: sel.objective.value,
        STATUS: sel.status.value,
        REASON_CODE: sel.reason_code.value,
        REASON: sel.reason,
        DRY_RUN: decision.dry_run,
        ESTIMATED_COST: sel.estimated_cost_micros,
        CANDIDATES: len(sel.alternatives),
        FALLBACKS: len(sel.fallbacks),
    }
    if chosen is not None:
        attrs[GEN_AI_REQUEST_MODEL] = chosen.model
        attrs[GEN_AI_PROVIDER_NAME] = chosen.provider
    rejected = [a for a in sel.alternatives if a.rejection not in _KEPT]
    if rejected:
        attrs[REJECTED_MODELS] = [a.model for a in rejected]
        attrs[REJECTIONS] = [a.rejection.value for a in rejected]
    span.set_attributes(attrs)
