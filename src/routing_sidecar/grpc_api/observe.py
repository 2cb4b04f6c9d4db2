"""What the Router RPCs tell OpenTelemetry: attempt spans, metrics, and the spans of spans.py.

Only the OpenTelemetry API is used here; `routing_sidecar.telemetry` decides where any of it
goes (and whether spans are made at all). Names and labels are documented in
docs/telemetry.md: keep that table in step with the constants below.

Never recorded: prompt text (the contract carries none), label values other than
`project`, request metadata, credentials.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.trace import (
    Link,
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
)
from opentelemetry.util.types import AttributeValue

from routing_sidecar import domain
from routing_sidecar.core.budget_rules import BudgetAlert
from routing_sidecar.grpc_api.spans import (
    ACTUAL_COST,
    ATTEMPT_COST,
    ATTEMPT_ESTIMATED_COST,
    ATTEMPT_FALLBACK,
    ATTEMPT_INDEX,
    ATTEMPT_OFF_PLAN,
    ATTEMPT_STATUS,
    ATTEMPTS,
    CACHE_RESULT,
    CACHE_SOURCE,
    DECISION_ID,
    DUPLICATE,
    ERROR_TYPE,
    GEN_AI_OPERATION_NAME,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_TOKEN_TYPE,
    GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS,
    OPERATION,
    ServerSpan,
    describe_decision,
    parent_context,
    trace_ids_of,
)
from routing_sidecar.grpc_api.tallies import counted
from routing_sidecar.local_histogram import LocalHistogram
from routing_sidecar.ports import Clock
from routing_sidecar.records import AttemptRecord, DecisionRecord
from routing_sidecar.service.outcomes import OutcomeAck
from routing_sidecar.service.routing import NO_TRACE, TraceIds

T = TypeVar("T")

LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                     0.25, 0.5, 1.0, 2.5)
# The GenAI conventions' advised buckets.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)
OPERATION_BUCKETS_S = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                       20.48, 40.96, 81.92)
DETECTION_STATES = ("healthy", "elevated_fallback", "degraded", "idle")
BREAKER_STATES = ("closed", "open", "half_open")
# Observable gauges read the ledger and health on the event loop at most this often.
SNAPSHOT_TTL_S = 1.0


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    """One provider's breaker and detection state, as the provider gauges report it."""

    provider: str
    detection: str = "healthy"  # healthy | elevated_fallback | degraded | idle
    breaker: str = "closed"  # closed | open | half_open


ProviderHealthSource = Callable[[], Iterable[ProviderHealth]]
BudgetSource = Callable[[], Sequence[domain.BudgetStatus]]


def _project(labels_json: str) -> str:
    try:
        value = json.loads(labels_json).get("project", "")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def _decision_labels(key: tuple[str, str, str, str]) -> dict[str, str]:
    policy, status, model, provider = key
    labels = {"policy": policy, "status": status}
    if model:
        labels["model"] = model
        labels["provider"] = provider
    return labels


def _attempt_labels(key: tuple[str, str, str]) -> dict[str, str]:
    model, provider, project = key
    labels = {"model": model, "provider": provider}
    if project:
        labels["project"] = project
    return labels


def _token_labels(key: tuple[str, str, str, str]) -> dict[str, str]:
    return {**_attempt_labels(key[:3]), "type": key[3]}


def _fallback_labels(key: tuple[str, str, str, str]) -> dict[str, str]:
    from_model, from_provider, model, provider = key
    return {"from_model": from_model, "from_provider": from_provider, "model": model,
            "provider": provider}


def _usage_labels(key: tuple[str, str, str]) -> dict[str, str]:
    provider, model, kind = key
    return {GEN_AI_OPERATION_NAME: OPERATION, GEN_AI_PROVIDER_NAME: provider,
            GEN_AI_REQUEST_MODEL: model, GEN_AI_TOKEN_TYPE: kind}


def _operation_labels(key: tuple[str, str, str]) -> dict[str, str]:
    provider, model, error = key
    labels = {GEN_AI_OPERATION_NAME: OPERATION, GEN_AI_PROVIDER_NAME: provider,
              GEN_AI_REQUEST_MODEL: model}
    if error:
        labels[ERROR_TYPE] = error
    return labels


def _cache_labels(key: tuple[str, str]) -> dict[str, str]:
    policy, project = key
    return {"policy": policy, "project": project} if project else {"policy": policy}


class Observer:
    """Records decisions and outcomes as span attributes, events, spans and metrics."""

    def __init__(
        self,
        tracer: Tracer,
        meter: Meter,
        clock: Clock,
        *,
        tracing: bool = True,
        budgets: BudgetSource | None = None,
        providers: Callable[[], Iterable[str]] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._tracer = tracer
        self._clock = clock
        self.tracing = tracing
        self._budgets = budgets or (lambda: ())
        self._providers = providers or (lambda: ())
        # Where the ledger and health live: observable callbacks read them on this loop.
        self._loop = loop
        self._loop_thread = threading.get_ident() if loop is not None else None
        self._health: ProviderHealthSource = self._all_healthy
        self._snapshots: dict[str, tuple[float, tuple[Any, ...]]] = {}
        self._snapshot_lock = threading.Lock()
        self._counters(meter)
        self._gauges(meter)

    def _counters(self, meter: Meter) -> None:
        # What every Route, cache lookup and reported attempt counts is tallied here
        # (tallies.py) and histograms are aggregated here (local_histogram.py), instead of the
        # SDK's per-call attribute work; app.py hands the histograms to the metric readers.
        self._decisions = counted(meter, "routing.decisions", "{decision}",
                                  "Decisions by model, provider, policy and status",
                                  _decision_labels)
        self.latency = LocalHistogram(
            "routing.decision.duration", "s",
            "Server time to decide, reserve and audit one task", LATENCY_BUCKETS_S)
        self._fallbacks = counted(
            meter, "routing.fallbacks", "{fallback}",
            "Reported attempts that moved on from a failed model to the next one",
            _fallback_labels)
        self._spend = counted(meter, "routing.spend", "usd", "Actual spend of reported attempts",
                              _attempt_labels, scale=domain.MICROS_PER_USD)
        self._tokens = counted(meter, "routing.tokens", "{token}", "Tokens of reported attempts",
                               _token_labels)
        self.token_usage = LocalHistogram(
            "gen_ai.client.token.usage", "{token}", "Tokens per reported attempt",
            TOKEN_BUCKETS)
        self.op_duration = LocalHistogram(
            "gen_ai.client.operation.duration", "s", "Duration of reported attempts",
            OPERATION_BUCKETS_S)
        self.histograms = (self.latency, self.token_usage, self.op_duration)
        self._cache_hits = counted(meter, "routing.cache.hits", "{lookup}",
                                   "Requests answered from the response cache", _cache_labels)
        self._cache_misses = counted(
            meter, "routing.cache.misses", "{lookup}",
            "Requests looked up in the response cache and not found there", _cache_labels)
        self._cache_saved = counted(
            meter, "routing.cache.saved", "usd",
            "What cache hits did not spend: each entry's recorded cost, once per hit",
            _cache_labels, scale=domain.MICROS_PER_USD)
        # Rare events: the SDK's own counters.
        self._budget_alerts = meter.create_counter(
            "routing.budget.alerts", "{crossing}",
            "Budget scopes crossing their alert_at fraction (state alert) or their limit "
            "(state exceeded)")
        self._labels_refused = meter.create_counter(
            "routing.labels.refused", "{request}",
            "Requests refused because a label brought a new value beyond its limits cap")

    def _gauges(self, meter: Meter) -> None:
        meter.create_observable_gauge(
            "routing.budget.utilisation", [self._observe_utilisation], "1",
            "(spent + reserved) / limit of each budget scope in its current period")
        meter.create_observable_gauge(
            "routing.budget.remaining", [self._observe_remaining], "usd",
            "Headroom left in each budget scope's current period")
        meter.create_observable_gauge(
            "routing.budget.state", [self._observe_budget_state], "1",
            "1 for the scope's current state (ok, alert, exceeded), 0 for the others")
        meter.create_observable_gauge(
            "routing.provider.detection_state", [self._observe_detection], "1",
            "1 for the provider's detection state, 0 for the others")
        meter.create_observable_gauge(
            "routing.provider.breaker_state", [self._observe_breaker], "1",
            "1 for the provider's circuit breaker state, 0 for the others")

    # -- Route -----------------------------------------------------------------------------

    def rpc(self, method: str, grpc_context: Any) -> contextlib.AbstractContextManager[Any]:
        """The server span of one Router RPC, continuing the caller's trace from its metadata.

        Equivalent to OpenTelemetry's grpc.aio server interceptor (the RPC conventions' span
        name and `rpc.*` attributes, the propagators of OTEL_PROPAGATORS, W3C by default) at
        about half its cost per call, measured: no wrapped servicer context, no peer parsing.
        """
        if not self.tracing:
            return _NO_SPAN
        return ServerSpan(self._tracer, method, grpc_context)

    def trace_ids(self) -> TraceIds:
        """Ids of the current span, for the decision's audit row."""
        return trace_ids_of(trace.get_current_span()) if self.tracing else NO_TRACE

    def stream_decision_span(self) -> Span | None:
        """A child span for one decision of a RouteStream, started now and ended by the caller.

        None when the stream is untraced. Its caller ends it once the decision has committed,
        which is after the block that decided it.
        """
        if not self.tracing or not trace.get_current_span().is_recording():
            return None
        return self._tracer.start_span("routing.decide")

    def cache_lookup(self, policy: str, project: str, hit: bool, saved_micros: int) -> None:
        """Count one response-cache lookup (and, on a hit, what it saved)."""
        key = (policy, project)
        if hit:
            self._cache_hits.add(key, 1)
            self._cache_saved.add(key, saved_micros)
        else:
            self._cache_misses.add(key, 1)

    def decided(self, task: domain.Task, decision: domain.Decision, elapsed_s: float,
                cache_result: str | None = None) -> None:
        """Count and time a decision; describe it on the current span when that records.

        `cache_result` ("hit" / "miss") says how the response-cache lookup went; left None it
        is read from the decision (a decision-mode `cache_key` was looked up).
        """
        sel = decision.selection
        chosen = sel.chosen
        status = sel.status.value.lower()
        model, provider = (chosen.model, chosen.provider) if chosen else ("", "")
        key = (sel.policy, status, model, provider)
        self._decisions.add(key, 1)
        self.latency.record(elapsed_s, key, _decision_labels)
        if self.tracing:
            span = trace.get_current_span()
            if span.is_recording():
                describe_decision(span, task, decision)
                if cache_result is None and (task.cache_key or decision.cached
                                             or decision.cache_lookup):
                    cache_result = "hit" if decision.cached else "miss"
                if cache_result is not None:
                    span.set_attribute(CACHE_RESULT, cache_result)
                if decision.cached is not None:
                    span.set_attribute(CACHE_SOURCE, decision.cached.source_decision_id)

    # -- ReportOutcome ---------------------------------------------------------------------

    def reported(self, ack: OutcomeAck) -> None:
        """Attempt spans under the decision's span, then spend, tokens and fallbacks."""
        if self.tracing:
            span = trace.get_current_span()
            if span.is_recording():
                span.set_attributes({
                    DECISION_ID: ack.decision_id, ATTEMPTS: len(ack.attempts),
                    ACTUAL_COST: ack.actual_cost_micros, DUPLICATE: ack.duplicate,
                })
        if ack.duplicate or ack.decision is None:
            return  # a repeat changed nothing, so it records nothing
        record = ack.decision
        if self.tracing:
            self._attempt_spans(record, ack.attempts)
        project = _project(record.labels_json)
        previous: AttemptRecord | None = None
        for a in ack.attempts:
            self._attempt_metrics(a, project, previous)
            previous = a

    def _attempt_spans(self, record: DecisionRecord, attempts: Sequence[AttemptRecord]) -> None:
        parent = parent_context(record)  # None: under this ReportOutcome span instead
        here = trace.get_current_span().get_span_context()
        links = [Link(here)] if parent is not None and here.is_valid else None
        # Attempts without started_at are laid end to end, the last one ending now.
        cursor = self._clock.now()
        starts: list[float] = []
        for a in reversed(attempts):
            start = a.started_at if a.started_at is not None else cursor - a.duration_s
            starts.append(start)
            cursor = start
        for a, start in zip(attempts, reversed(starts), strict=True):
            attrs: dict[str, AttributeValue] = {
                GEN_AI_OPERATION_NAME: OPERATION,
                GEN_AI_REQUEST_MODEL: a.model,
                GEN_AI_PROVIDER_NAME: a.provider,
                GEN_AI_USAGE_INPUT_TOKENS: a.input_tokens,
                GEN_AI_USAGE_OUTPUT_TOKENS: a.output_tokens,
                DECISION_ID: record.decision_id,
                ATTEMPT_INDEX: a.attempt_index,
                ATTEMPT_STATUS: a.status.value,
                ATTEMPT_COST: a.actual_cost_micros,
                ATTEMPT_ESTIMATED_COST: a.estimated_cost_micros,
                ATTEMPT_FALLBACK: a.model != record.chosen_model,
                ATTEMPT_OFF_PLAN: a.off_plan,
            }
            failed = a.status is not domain.AttemptStatus.SUCCESS
            if failed:
                attrs[ERROR_TYPE] = _error_type(a)
            start_ns = int(start * 1e9)
            span = self._tracer.start_span(
                f"{OPERATION} {a.model}", context=parent, kind=SpanKind.CLIENT,
                attributes=attrs, links=links, start_time=start_ns,
            )
            if failed:
                span.set_status(Status(StatusCode.ERROR, _error_type(a)))
            span.end(end_time=start_ns + int(max(a.duration_s, 0.0) * 1e9))

    def _attempt_metrics(self, a: AttemptRecord, project: str,
                         previous: AttemptRecord | None) -> None:
        self._spend.add((a.model, a.provider, project), a.actual_cost_micros)
        for kind, count in (("input", a.input_tokens), ("output", a.output_tokens)):
            self._tokens.add((a.model, a.provider, project, kind), count)
            if count > 0:
                self.token_usage.record(count, (a.provider, a.model, kind), _usage_labels)
        failed = a.status is not domain.AttemptStatus.SUCCESS
        self.op_duration.record(max(a.duration_s, 0.0),
                                (a.provider, a.model, _error_type(a) if failed else ""),
                                _operation_labels)
        if previous is not None:
            self._fallbacks.add((previous.model, previous.provider, a.model, a.provider), 1)

    # -- gauges ----------------------------------------------------------------------------

    def set_provider_health(self, source: ProviderHealthSource) -> None:
        """Feed the provider gauges from `source`.

        `source` is called on the event loop (so it may read loop-owned state without locks),
        at most once a second; until it is set every catalog provider reports healthy/closed.
        """
        self._health = source
        with self._snapshot_lock:
            self._snapshots.pop("health", None)

    def _all_healthy(self) -> Iterable[ProviderHealth]:
        return [ProviderHealth(p) for p in sorted(set(self._providers()))]

    def _snapshot(self, key: str, read: Callable[[], Iterable[T]]) -> Sequence[T]:
        """`read()` run on the event loop (the ledger is not thread-safe), cached briefly."""
        now = time.monotonic()
        with self._snapshot_lock:
            cached = self._snapshots.get(key)
        if cached is not None and now - cached[0] < SNAPSHOT_TTL_S:
            return cached[1]
        value = self._on_loop(lambda: tuple(read()), cached[1] if cached else ())
        with self._snapshot_lock:
            self._snapshots[key] = (now, value)
        return value

    def _on_loop(self, fn: Callable[[], T], fallback: T) -> T:
        loop = self._loop
        if (loop is None or threading.get_ident() == self._loop_thread or loop.is_closed()
                or not loop.is_running()):
            return fn()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except Exception as exc:
                done.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
            return done.result(timeout=2.0)
        except (RuntimeError, concurrent.futures.TimeoutError):
            return fallback

    def _budget_statuses(self) -> Iterator[domain.BudgetStatus]:
        for s in self._snapshot("budgets", self._budgets):
            if s.period is not domain.BudgetPeriod.TASK and s.limit_micros > 0:
                yield s

    def _observe_utilisation(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation((s.spent_micros + s.reserved_micros) / s.limit_micros,
                            {"scope": s.scope, "period": s.period.value})
                for s in self._budget_statuses()]

    def _observe_remaining(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.remaining_micros / domain.MICROS_PER_USD,
                            {"scope": s.scope, "period": s.period.value})
                for s in self._budget_statuses()]

    def _observe_budget_state(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(int(s.state is state),
                            {"scope": s.scope, "period": s.period.value,
                             "state": state.value.lower()})
                for s in self._budget_statuses() for state in domain.BudgetState]

    def budget_alert(self, alert: BudgetAlert) -> None:
        """Count one threshold crossing of a budget scope."""
        self._budget_alerts.add(1, {"scope": alert.scope, "period": alert.period.value,
                                    "state": alert.state.value.lower()})

    def label_refused(self, label: str) -> None:
        """Count one request refused for a new value of `label` beyond its cap."""
        self._labels_refused.add(1, {"label": label})

    def _observe_detection(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(int(h.detection == state), {"provider": h.provider, "state": state})
                for h in self._snapshot("health", self._health) for state in DETECTION_STATES]

    def _observe_breaker(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(int(h.breaker == state), {"provider": h.provider, "state": state})
                for h in self._snapshot("health", self._health) for state in BREAKER_STATES]


_NO_SPAN = contextlib.nullcontext()


def _error_type(a: AttemptRecord) -> str:
    return a.error_type or a.status.value.lower()


def disabled(clock: Clock) -> Observer:
    """An observer that records nothing (no tracer, no meter)."""
    from opentelemetry.metrics import NoOpMeterProvider  # noqa: PLC0415

    return Observer(trace.NoOpTracer(), NoOpMeterProvider().get_meter("routing_sidecar"), clock,
                    tracing=False)
