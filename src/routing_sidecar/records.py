"""The rows the stores keep and hand back: audit records, their codec, routing statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from routing_sidecar import domain
from routing_sidecar.core import reasons
from routing_sidecar.core.budget_rules import EntryKind
from routing_sidecar.quick_init import quick_init


@quick_init
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
            estimated_cost_micros=sel.estimated_cost_micros,
            reason=_stored_reason(sel, task.task_type),
            alternatives_json=orjson.dumps(_alternative_rows(sel)).decode(),
            fallbacks_json=orjson.dumps(_fallback_rows(sel)).decode(),
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
# Where a sentence can be rebuilt (core/reasons.py), the array holds its code (an int, which
# implies the rejection) in the rejection's place and the code's figures (a list) in the
# reason's; a fallback that repeats an alternative is that alternative's index; a decision's
# sentence is MARK + JSON: [code, figures...], or the sentence itself as a JSON string.
MARK = "\x1f"
_REJECTION = ALTERNATIVE_FIELDS.index("rejection")
_INDEX = ""  # the key of a read fallback row that is an alternative's index, until filled in
_COUNTED = frozenset({domain.Rejection.CHOSEN, domain.Rejection.FALLBACK,
                      domain.Rejection.OUTSCORED})
# The chosen alternative's rejection as either form of a row spells it.
_CHOSEN = (domain.Rejection.CHOSEN.value,
           *(c for c, r in reasons.REJECTION_OF.items() if r is domain.Rejection.CHOSEN))


def _alternative_rows(sel: domain.Selection) -> list[list[Any]]:
    top = sel.chosen  # an Alternative is the Figures its sentences quote
    out = []
    why: str | None = None
    for a in sel.alternatives:
        code = reasons.alternative_code(a.rejection, a.reason, a, top, why)
        if code is not None:
            why = reasons.reserved_why(*code, why)
        row: list[Any] = [a.model, a.provider, a.tier, a.score, a.estimated_cost_micros,
                          *(code or (a.rejection.value, a.reason)), a.estimated_quality]
        if a.net_value_micros is not None:
            row += [a.slot_id, a.net_value_micros]
        elif a.slot_id is not None:
            row.append(a.slot_id)
        out.append(row)
    return out


def _fallback_rows(sel: domain.Selection) -> list[int | list[Any]]:
    index = {(a.model, a.provider, a.tier, a.estimated_cost_micros, a.slot_id): i
             for i, a in enumerate(sel.alternatives)}
    out: list[int | list[Any]] = []
    for f in sel.fallbacks:
        i = index.get((f.model, f.provider, f.tier, f.estimated_cost_micros, f.slot_id))
        if i is not None:
            out.append(i)
            continue
        row: list[Any] = [f.model, f.provider, f.tier, f.estimated_cost_micros]
        if f.slot_id is not None:
            row.append(f.slot_id)
        out.append(row)
    return out


def _routed(chosen: domain.Alternative, task_type: str, policy: str,
            objective: str) -> reasons.Routed:
    return reasons.Routed(chosen.model, chosen.provider, chosen.tier, task_type, policy,
                          objective, chosen.score, chosen.estimated_cost_micros)


def _counts(rejections: list[domain.Rejection]) -> tuple[int, int]:
    """Reserved higher-tier models and the others filtered out, as the decision counted them."""
    reserved = rejections.count(domain.Rejection.TIER_RESERVED)
    return reserved, sum(r not in _COUNTED for r in rejections) - reserved


def _stored_reason(sel: domain.Selection, task_type: str) -> str:
    chosen = sel.chosen
    if (chosen is not None and sel.status is domain.DecisionStatus.ROUTED
            and any(a is chosen for a in sel.alternatives)):
        code = reasons.routed_code(sel.reason,
                                   _routed(chosen, task_type, sel.policy, sel.objective),
                                   *_counts([a.rejection for a in sel.alternatives]))
        if code is not None:
            return MARK + orjson.dumps([code[0], *code[1]]).decode()
    if sel.reason.startswith(MARK):  # a sentence that happens to begin with the mark
        return MARK + orjson.dumps(sel.reason).decode()
    return sel.reason


def _read_rows(text: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    for row in orjson.loads(text):
        if isinstance(row, dict):  # written by an earlier build
            out.append({f: row.get(f) for f in fields})
        elif isinstance(row, int):  # a fallback that repeats an alternative: filled in later
            out.append({_INDEX: row})
        else:
            out.append({f: row[i] if i < len(row) else None for i, f in enumerate(fields)})
    return out


def _stored_figures(a: dict[str, Any]) -> reasons.StoredFigures:
    return reasons.StoredFigures(a["tier"], a["score"], a["net_value_micros"])


def _alternatives(text: str) -> list[dict[str, Any]]:
    """The alternatives with every coded sentence rebuilt and its rejection named."""
    alts = _read_rows(text, ALTERNATIVE_FIELDS)
    coded = [a for a in alts if isinstance(a["rejection"], int)]
    if not coded:
        return alts
    top = next((a for a in alts if a["rejection"] in _CHOSEN), None)
    top_figures = _stored_figures(top) if top is not None else None
    why: str | None = None
    for a in coded:
        code, args = a["rejection"], a["reason"]
        a["reason"] = reasons.alternative_reason(code, args, _stored_figures(a), top_figures,
                                                 why)
        a["rejection"] = reasons.REJECTION_OF[code].value
        why = reasons.reserved_why(code, args, why)
    return alts


def stored_alternatives(record: DecisionRecord) -> list[dict[str, Any]]:
    """The audit row's alternatives, one dict of ALTERNATIVE_FIELDS each."""
    return _alternatives(record.alternatives_json)


def stored_fallbacks(record: DecisionRecord) -> list[dict[str, Any]]:
    """The audit row's fallback chain, one dict of FALLBACK_FIELDS each."""
    rows = _read_rows(record.fallbacks_json, FALLBACK_FIELDS)
    if all(_INDEX not in f for f in rows):
        return rows
    alts = orjson.loads(record.alternatives_json)  # arrays: indexes are only written beside them
    return [_repeated(alts[f[_INDEX]]) if _INDEX in f else f for f in rows]


_FROM_ALTERNATIVE = tuple(ALTERNATIVE_FIELDS.index(f) for f in FALLBACK_FIELDS)


def _repeated(alt: list[Any]) -> dict[str, Any]:
    """The fallback an alternative's array repeats."""
    return {f: alt[i] if i < len(alt) else None
            for f, i in zip(FALLBACK_FIELDS, _FROM_ALTERNATIVE, strict=True)}


def stored_reason(record: DecisionRecord) -> str:
    """The decision's sentence as it was answered, rebuilt when the row holds it as a code."""
    if not record.reason.startswith(MARK):
        return record.reason
    stored = orjson.loads(record.reason[len(MARK):])
    if isinstance(stored, str):
        return stored
    # Coded only when the chosen is among the alternatives (arrays), coded or as written.
    alts = orjson.loads(record.alternatives_json)
    c = dict(zip(ALTERNATIVE_FIELDS, next(a for a in alts if a[_REJECTION] in _CHOSEN),
                 strict=False))
    routed = reasons.Routed(c["model"], c["provider"], c["tier"], record.task_type,
                            record.policy, record.objective.value, c["score"],
                            c["estimated_cost_micros"])
    return reasons.routed_reason(stored[0], stored[1:], routed)



@quick_init
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


@quick_init
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


@quick_init
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
