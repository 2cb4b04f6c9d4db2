"""The rows the stores keep and hand back: audit records, their codec, routing statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from routing_sidecar import domain
from routing_sidecar.core.budget_rules import EntryKind


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One audit row of `model_routing_decisions`: what was decided, why, under which config."""

    decision_id: str
    task_id: str
    task_type: str
    status: domain.DecisionStatus
    reason_code: domain.ReasonCode
    chosen_model: str | None
    chosen_provider: str | None
    chosen_slot_id: str | None
    tier: int | None
    policy: str
    objective: domain.Objective
    estimated_cost_micros: int
    reason: str
    alternatives_json: str
    fallbacks_json: str
    labels_json: str
    dry_run: bool
    decided_at: float
    config_hash: str
    trace_id: str = ""
    span_id: str = ""

    @classmethod
    def from_decision(cls, decision: domain.Decision, task: domain.Task, config_hash: str,
                      trace_id: str = "", span_id: str = "") -> DecisionRecord:
        """The audit row for a decision about a task."""
        sel = decision.selection
        chosen = sel.chosen
        return cls(
            decision_id=decision.decision_id, task_id=decision.task_id,
            task_type=task.task_type, status=sel.status, reason_code=sel.reason_code,
            chosen_model=chosen.model if chosen else None,
            chosen_provider=chosen.provider if chosen else None,
            chosen_slot_id=chosen.slot_id if chosen else None,
            tier=chosen.tier if chosen else None,
            policy=sel.policy, objective=sel.objective,
            estimated_cost_micros=sel.estimated_cost_micros, reason=sel.reason,
            # orjson writes the frozen dataclasses directly, several times faster than
            # json.dumps: this runs on every Route.
            alternatives_json=orjson.dumps([_alternative_row(a) for a in sel.alternatives]
                                           ).decode(),
            fallbacks_json=orjson.dumps([_fallback_row(f) for f in sel.fallbacks]).decode(),
            labels_json=orjson.dumps(dict(task.labels), option=orjson.OPT_SORT_KEYS).decode(),
            dry_run=decision.dry_run, decided_at=decision.decided_at,
            config_hash=config_hash, trace_id=trace_id, span_id=span_id,
        )


# The audit row keeps each alternative and fallback as an array in this field order, optional
# fields at the end and left out when unset: the field names repeated in every object made up
# half of a decision's row. Rows written as objects by earlier builds read back the same.
ALTERNATIVE_FIELDS = ("model", "provider", "tier", "score", "estimated_cost_micros", "rejection",
                      "reason", "estimated_quality", "slot_id", "net_value_micros")
FALLBACK_FIELDS = ("model", "provider", "tier", "estimated_cost_micros", "slot_id")


def _alternative_row(a: domain.Alternative) -> list[Any]:
    row: list[Any] = [a.model, a.provider, a.tier, a.score, a.estimated_cost_micros,
                      a.rejection, a.reason, a.estimated_quality]
    if a.net_value_micros is not None:
        row += [a.slot_id, a.net_value_micros]
    elif a.slot_id is not None:
        row.append(a.slot_id)
    return row


def _fallback_row(f: domain.Fallback) -> list[Any]:
    row: list[Any] = [f.model, f.provider, f.tier, f.estimated_cost_micros]
    if f.slot_id is not None:
        row.append(f.slot_id)
    return row


def _read_rows(text: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = orjson.loads(text)
    out = []
    for row in rows:
        if isinstance(row, dict):  # written by an earlier build
            out.append({f: row.get(f) for f in fields})
        else:
            out.append({f: row[i] if i < len(row) else None for i, f in enumerate(fields)})
    return out


def stored_alternatives(record: DecisionRecord) -> list[dict[str, Any]]:
    """The audit row's alternatives, one dict of ALTERNATIVE_FIELDS each."""
    return _read_rows(record.alternatives_json, ALTERNATIVE_FIELDS)


def stored_fallbacks(record: DecisionRecord) -> list[dict[str, Any]]:
    """The audit row's fallback chain, one dict of FALLBACK_FIELDS each."""
    return _read_rows(record.fallbacks_json, FALLBACK_FIELDS)


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One reported attempt of a decision, a row of `model_selections`."""

    decision_id: str
    attempt_index: int
    model: str
    provider: str
    status: domain.AttemptStatus
    error_type: str
    started_at: float | None
    duration_s: float
    input_tokens: int
    output_tokens: int
    estimated_cost_micros: int
    actual_cost_micros: int
    # The decision's plan (chosen model and fallbacks) did not name this attempt's model.
    off_plan: bool = False

    @classmethod
    def from_attempt(cls, decision_id: str, attempt_index: int, attempt: domain.Attempt,
                     estimated_cost_micros: int, actual_cost_micros: int,
                     off_plan: bool = False) -> AttemptRecord:
        """The row for an attempt; costs come from the caller (reported or from the catalog)."""
        a = attempt
        return cls(decision_id, attempt_index, a.model, a.provider, a.status, a.error_type,
                   a.started_at, a.duration_s, a.input_tokens, a.output_tokens,
                   estimated_cost_micros, actual_cost_micros, off_plan)


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    """How a decision ended, a row of `decision_outcomes`."""

    decision_id: str
    success: bool
    quality: float | None
    actual_cost_micros: int
    reported_at: float


@dataclass(frozen=True, slots=True)
class GradeRecord:
    """A later grade of a recorded decision's answer, a row of `decision_grades`."""

    decision_id: str
    model: str  # the model whose answer was graded
    quality: float
    graded_at: float


@dataclass(frozen=True, slots=True)
class PerformanceRecord:
    """One (task type, model, hour) window of `model_performance`, added to what is there."""

    task_type: str
    model: str
    window_start: float
    decisions: int = 0
    successes: int = 0
    failures: int = 0
    quality_sum: float = 0.0
    quality_count: int = 0
    latency_sum_s: float = 0.0
    cost_sum_micros: int = 0


def per_decision(total_micros: int, decisions: int) -> int:
    """A total spread over decisions, rounded down; 0 without decisions."""
    return total_micros // decisions if decisions else 0


@dataclass(frozen=True, slots=True)
class ModelTaskCell:
    """Routed decisions of one model for one task type, with their costs."""

    model: str
    task_type: str
    decisions: int
    estimated_cost_micros: int
    actual_cost_micros: int

    @property
    def estimated_per_decision(self) -> int:
        """Mean estimated cost of a decision in micro-USD (rounded down)."""
        return per_decision(self.estimated_cost_micros, self.decisions)

    @property
    def actual_per_decision(self) -> int:
        """Mean reported cost of a decision in micro-USD (rounded down)."""
        return per_decision(self.actual_cost_micros, self.decisions)


@dataclass(frozen=True, slots=True)
class ModelLabelCell:
    """Routed decisions of one model for one label value, with their costs."""

    model: str
    label_key: str
    label_value: str
    decisions: int
    estimated_cost_micros: int
    actual_cost_micros: int

    @property
    def estimated_per_decision(self) -> int:
        """Mean estimated cost of a decision in micro-USD (rounded down)."""
        return per_decision(self.estimated_cost_micros, self.decisions)

    @property
    def actual_per_decision(self) -> int:
        """Mean reported cost of a decision in micro-USD (rounded down)."""
        return per_decision(self.actual_cost_micros, self.decisions)


@dataclass(frozen=True, slots=True)
class ProviderCell:
    """One provider's decisions, fallbacks, attempts, failures, tokens and spend."""

    provider: str
    decisions: int = 0
    fallback_decisions: int = 0
    attempts: int = 0
    failed_attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    spend_micros: int = 0

    @property
    def fallback_rate(self) -> float:
        """Share of its decisions that needed a fallback."""
        return self.fallback_decisions / self.decisions if self.decisions else 0.0

    @property
    def error_rate(self) -> float:
        """Share of the attempts it served that failed."""
        return self.failed_attempts / self.attempts if self.attempts else 0.0

    @property
    def blended_cost_micros_per_mtok(self) -> int:
        """Spend per million tokens, input and output together."""
        tokens = self.input_tokens + self.output_tokens
        return self.spend_micros * 1_000_000 // tokens if tokens else 0


@dataclass(frozen=True, slots=True)
class RoutingStats:
    """The dashboard matrix over decisions made since a time (dry runs left out)."""

    since: float
    by_model_task: tuple[ModelTaskCell, ...] = ()
    by_model_label: tuple[ModelLabelCell, ...] = ()
    by_provider: tuple[ProviderCell, ...] = ()


@dataclass(frozen=True, slots=True)
class LedgerTotal:
    """Sum of persisted ledger rows of one kind in one bucket."""

    scope: str
    period: domain.BudgetPeriod
    period_start: float
    kind: EntryKind
    amount_micros: int
