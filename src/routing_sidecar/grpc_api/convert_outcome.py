"""Outcome, budget and stats messages: protobuf <-> domain, validated field by field."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from routing_sidecar import domain
from routing_sidecar.errors import InvalidArgument
from routing_sidecar.grpc_api.convert import MAX_TOKENS, _fraction, budget_to_pb, check_name
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb

MAX_ATTEMPTS = 32
MAX_COST_MICROS = 10**12  # a million dollars for one call is a typo, not a bill
MAX_DURATION_S = 86_400  # an attempt (or a retry-after) longer than a day is a typo
# Attempt start times from 1970 to 2199: their span timestamps (int64 nanoseconds, unsigned on
# the OTLP wire) must encode, or one hostile outcome loses a whole batch of traces.
MAX_STARTED_AT_S = 7_258_118_400
NANOS = 1_000_000_000

ATTEMPT_FROM_PB = {
    pb.ATTEMPT_STATUS_SUCCESS: domain.AttemptStatus.SUCCESS,
    pb.ATTEMPT_STATUS_TRANSIENT_ERROR: domain.AttemptStatus.TRANSIENT_ERROR,
    pb.ATTEMPT_STATUS_PERMANENT_ERROR: domain.AttemptStatus.PERMANENT_ERROR,
    pb.ATTEMPT_STATUS_TIMEOUT: domain.AttemptStatus.TIMEOUT,
    pb.ATTEMPT_STATUS_RATE_LIMITED: domain.AttemptStatus.RATE_LIMITED,
    pb.ATTEMPT_STATUS_CANCELLED: domain.AttemptStatus.CANCELLED,
}


def _seconds(field: str, d: Duration) -> float:
    if abs(d.nanos) >= NANOS:
        raise InvalidArgument(field, f"nanos must be within +-999999999 (got {d.nanos})")
    value = d.seconds + d.nanos / 1e9
    if value < 0:
        raise InvalidArgument(field, f"must not be negative (got {value}s)")
    if value > MAX_DURATION_S:
        raise InvalidArgument(field, f"must be at most {MAX_DURATION_S}s (got {value}s)")
    return value


def _started_at(field: str, ts: Timestamp) -> float:
    if not 0 <= ts.nanos < NANOS:
        raise InvalidArgument(field, f"nanos must be 0..999999999 (got {ts.nanos})")
    if not 0 <= ts.seconds < MAX_STARTED_AT_S:
        raise InvalidArgument(field, f"must be between 1970 and 2199 (got {ts.seconds}s)")
    return ts.seconds + ts.nanos / 1e9


def _count(field: str, value: int, limit: int) -> int:
    if value < 0:
        raise InvalidArgument(field, f"must not be negative (got {value})")
    if value > limit:
        raise InvalidArgument(field, f"must be at most {limit} (got {value})")
    return value


def _attempt(i: int, a: pb.Attempt) -> domain.Attempt:
    where = f"attempts[{i}]"
    status = ATTEMPT_FROM_PB.get(a.status)
    if status is None:
        raise InvalidArgument(f"{where}.status", f"unknown or missing status {a.status}")
    return domain.Attempt(
        model=check_name(f"{where}.model", a.model),
        provider=check_name(f"{where}.provider", a.provider, required=False),
        status=status,
        error_type=check_name(f"{where}.error_type", a.error_type, required=False),
        started_at=(
            _started_at(f"{where}.started_at", a.started_at) if a.HasField("started_at") else None
        ),
        duration_s=_seconds(f"{where}.duration", a.duration),
        input_tokens=_count(f"{where}.input_tokens", a.input_tokens, MAX_TOKENS),
        output_tokens=_count(f"{where}.output_tokens", a.output_tokens, MAX_TOKENS),
        cost_micros=(
            _count(f"{where}.cost_micros", a.cost_micros, MAX_COST_MICROS)
            if a.HasField("cost_micros")
            else None
        ),
        retry_after_s=(
            _seconds(f"{where}.retry_after", a.retry_after) if a.HasField("retry_after") else None
        ),
    )


def outcome_from_pb(msg: pb.Outcome) -> domain.Outcome:
    """Validate an Outcome's shape and convert it; raises InvalidArgument naming the field."""
    decision_id = check_name("decision_id", msg.decision_id)
    if len(msg.attempts) > MAX_ATTEMPTS:
        raise InvalidArgument("attempts", f"has {len(msg.attempts)}; at most {MAX_ATTEMPTS}")
    quality = None
    if msg.HasField("quality"):
        quality = _fraction("quality", msg.quality)
    return domain.Outcome(
        decision_id=decision_id,
        attempts=tuple(_attempt(i, a) for i, a in enumerate(msg.attempts)),
        success=msg.success,
        quality=quality,
        cache_value=msg.cache_value,
    )


def budget_list_to_pb(statuses: list[domain.BudgetStatus]) -> pb.BudgetStatusList:
    """Wrap budget statuses for GetBudgetStatus."""
    return pb.BudgetStatusList(budgets=[budget_to_pb(b) for b in statuses])
