"""RoutingStats and OutcomeAck to their wire form."""

from __future__ import annotations

from routing_sidecar import ports
from routing_sidecar.grpc_api.convert import budget_to_pb, timestamp
from routing_sidecar.service.outcomes import OutcomeAck
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb


def _per(total: int, n: int) -> int:
    return total // n if n else 0


def _provider(p: ports.ProviderCell) -> pb.ProviderStats:
    tokens = p.input_tokens + p.output_tokens
    return pb.ProviderStats(
        provider=p.provider,
        decisions=p.decisions,
        fallback_rate=p.fallback_decisions / p.decisions if p.decisions else 0.0,
        error_rate=p.failed_attempts / p.attempts if p.attempts else 0.0,
        input_tokens=p.input_tokens,
        output_tokens=p.output_tokens,
        spend_micros=p.spend_micros,
        blended_cost_micros_per_mtok=p.spend_micros * 1_000_000 // tokens if tokens else 0,
    )


def stats_to_pb(stats: ports.RoutingStats, until: float) -> pb.RoutingStats:
    """The dashboard matrix and per-provider totals."""
    cells = [
        pb.MatrixCell(
            model=c.model, dimension="task_type", value=c.task_type, decisions=c.decisions,
            estimated_cost_micros_per_decision=_per(c.estimated_cost_micros, c.decisions),
            actual_cost_micros_per_decision=_per(c.actual_cost_micros, c.decisions),
        )
        for c in stats.by_model_task
    ]
    cells += [
        pb.MatrixCell(
            model=c.model, dimension=f"label:{c.label_key}", value=c.label_value,
            decisions=c.decisions,
            estimated_cost_micros_per_decision=_per(c.estimated_cost_micros, c.decisions),
            actual_cost_micros_per_decision=_per(c.actual_cost_micros, c.decisions),
        )
        for c in stats.by_model_label
    ]
    msg = pb.RoutingStats(cells=cells, providers=[_provider(p) for p in stats.by_provider])
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
    )
