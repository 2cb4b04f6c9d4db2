"""RoutingStats and OutcomeAck to their wire form."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from routing_sidecar import ports, records
from routing_sidecar.core.health import Detection, HealthStats
from routing_sidecar.grpc_api.convert import budget_to_pb, timestamp
from routing_sidecar.grpc_api.convert_cache import usage_to_pb
from routing_sidecar.service.learning import LearnerReport
from routing_sidecar.service.outcomes import OutcomeAck
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb


def _provider(p: records.ProviderCell) -> pb.ProviderStats:
    return pb.ProviderStats(
        provider=p.provider,
        decisions=p.decisions,
        fallback_rate=p.fallback_rate,
        error_rate=p.error_rate,
        input_tokens=p.input_tokens,
        output_tokens=p.output_tokens,
        spend_micros=p.spend_micros,
        blended_cost_micros_per_mtok=p.blended_cost_micros_per_mtok,
    )


def _health(h: HealthStats, detection: Mapping[str, Detection]) -> pb.HealthRow:
    row = pb.HealthRow(
        scope=h.scope.value, name=h.name, volume=h.volume, success_rate=h.success_rate,
        transient_rate=h.transient_rate, permanent_rate=h.permanent_rate,
        timeout_rate=h.timeout_rate, rate_limited_rate=h.rate_limited_rate,
        fallback_rate=h.fallback_rate, latency_ewma_s=h.latency_ewma_s or 0.0,
        tokens_per_s=h.tokens_per_s or 0.0, breaker=h.breaker.value,
        detection_state=(d.value if (d := detection.get(f"{h.scope.value}:{h.name}")) else ""),
    )
    if h.open_until is not None:
        row.open_until.CopyFrom(timestamp(h.open_until))
    return row


def stats_to_pb(
    stats: records.RoutingStats, until: float, report: LearnerReport | None = None,
    cache: Iterable[ports.CacheUsage] = (),
) -> pb.RoutingStats:
    """The dashboard matrix, per-provider totals, live health and learned quality."""
    cells = [
        pb.MatrixCell(
            model=c.model, dimension="task_type", value=c.task_type, decisions=c.decisions,
            estimated_cost_micros_per_decision=c.estimated_per_decision,
            actual_cost_micros_per_decision=c.actual_per_decision,
        )
        for c in stats.by_model_task
    ]
    cells += [
        pb.MatrixCell(
            model=c.model, dimension=f"label:{c.label_key}", value=c.label_value,
            decisions=c.decisions,
            estimated_cost_micros_per_decision=c.estimated_per_decision,
            actual_cost_micros_per_decision=c.actual_per_decision,
        )
        for c in stats.by_model_label
    ]
    report = report or LearnerReport()
    providers = [_provider(p) for p in stats.by_provider]
    seen = {p.provider for p in providers}
    # Providers with no traffic in the window are listed too: "idle" is worth seeing.
    providers += [
        pb.ProviderStats(provider=key.removeprefix("provider:"))
        for key in sorted(report.detection)
        if key.startswith("provider:") and key.removeprefix("provider:") not in seen
    ]
    for p in providers:
        state = report.detection.get(f"provider:{p.provider}")
        p.detection_state = state.value if state else ""
    msg = pb.RoutingStats(
        cells=cells,
        providers=providers,
        health=[_health(h, report.detection) for h in report.health],
        learned=[
            pb.LearnedQuality(task_type=q.task_type, model=q.model, mean=q.mean,
                              lower_bound=q.lower_bound, samples=q.samples)
            for q in report.learned
        ],
        cache=[usage_to_pb(u) for u in cache],
    )
    msg.window_start.CopyFrom(timestamp(stats.since))
    msg.window_end.CopyFrom(timestamp(until))
    return msg


def ack_to_pb(ack: OutcomeAck) -> pb.OutcomeAck:
    """Confirmation of a recorded outcome."""
    return pb.OutcomeAck(
        decision_id=ack.decision_id,
        actual_cost_micros=ack.actual_cost_micros,
        duplicate=ack.duplicate,
        budgets=[budget_to_pb(b) for b in ack.budgets],
        cache_stored=ack.cache_stored,
    )
