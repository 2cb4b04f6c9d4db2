"""Protocols for the swappable back ends the service depends on, and the records they carry."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

from routing_sidecar import domain
from routing_sidecar.calls import ProviderCall, StreamEvent
from routing_sidecar.core.budget_rules import EntryKind, LedgerEntry


class Clock(Protocol):
    """Wall-clock and monotonic time, injected so tests and the core stay deterministic."""

    def now(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds, for measuring durations."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """Seconds since the epoch (UTC)."""
        return time.time()

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


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
            alternatives_json=orjson.dumps(sel.alternatives).decode(),
            fallbacks_json=orjson.dumps(sel.fallbacks).decode(),
            labels_json=_json(dict(sorted(task.labels.items()))),
            dry_run=decision.dry_run, decided_at=decision.decided_at,
            config_hash=config_hash, trace_id=trace_id, span_id=span_id,
        )


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


@dataclass(frozen=True, slots=True)
class ModelTaskCell:
    """Routed decisions of one model for one task type, with their costs."""

    model: str
    task_type: str
    decisions: int
    estimated_cost_micros: int
    actual_cost_micros: int


@dataclass(frozen=True, slots=True)
class ModelLabelCell:
    """Routed decisions of one model for one label value, with their costs."""

    model: str
    label_key: str
    label_value: str
    decisions: int
    estimated_cost_micros: int
    actual_cost_micros: int


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


class LedgerStore(Protocol):
    """Durable budget ledger rows; the in-memory Ledger is rebuilt from them at start."""

    async def load_ledger_entries(self) -> list[LedgerEntry]:
        """Every persisted row, in the order written."""
        ...

    async def record_ledger(self, rows: Sequence[LedgerEntry]) -> None:
        """Persist rows (expiry, release); return once committed."""
        ...

    async def ledger_totals(self) -> list[LedgerTotal]:
        """Sums of persisted rows per scope, period, period start and kind."""
        ...


class AuditLog(Protocol):
    """Durable decisions, attempts, outcomes and config versions."""

    async def record_decision(self, row: DecisionRecord,
                              ledger_rows: Sequence[LedgerEntry]) -> None:
        """Persist a decision with its reservation rows; return once committed."""
        ...

    async def get_decision(self, decision_id: str) -> DecisionRecord | None:
        """A recorded decision, or None."""
        ...

    async def record_outcome(self, decision_id: str, attempts: Sequence[AttemptRecord],
                             outcome: OutcomeRecord, ledger_rows: Sequence[LedgerEntry],
                             performance: Sequence[PerformanceRecord] = ()) -> bool:
        """Persist an outcome once; False (nothing written) when one is already recorded."""
        ...

    async def get_outcome(self, decision_id: str) -> OutcomeRecord | None:
        """The outcome recorded for a decision, or None."""
        ...

    async def get_attempts(self, decision_id: str) -> list[AttemptRecord]:
        """The attempts recorded for a decision, in attempt order."""
        ...

    async def record_grade(self, grade: GradeRecord,
                           performance: Sequence[PerformanceRecord] = ()) -> bool:
        """Persist a grade once; False (nothing written) when the decision is graded already."""
        ...

    async def save_learned(self, book: str, state_json: str, at: float) -> None:
        """Replace the snapshot of one learned book."""
        ...

    async def load_learned(self, book: str) -> str | None:
        """The last snapshot of a learned book, or None."""
        ...

    async def record_config(self, config_hash: str, config_json: str, loaded_at: float) -> None:
        """Remember a config version (first load time wins)."""
        ...

    async def routing_stats(self, since: float, label_keys: Sequence[str] = ()) -> RoutingStats:
        """The routing matrix over decisions since a time."""
        ...

    async def prune(self, older_than: float | None = None) -> int:
        """Delete decisions older than a time (default: retention); return how many."""
        ...


class ProviderClient(Protocol):
    """One LLM provider (providers/): its credentials, a streamed call, and its connection pool.

    `stream(call)` is an async generator of `TextDelta` events closed by exactly one
    `StreamEnd`; the first event's arrival is the attempt's first token. A failure raises
    `errors.ProviderError` (classified, carrying the usage consumed so far). Closing the
    generator early (`aclose()`, or cancelling the task iterating it) cancels the upstream
    request at once and closes its connection. Timeouts (connect, first token, total) are the
    provider's, enforced inside `stream`.
    """

    @property
    def name(self) -> str:
        """The provider's name in the config (`models.<m>.provider`)."""
        ...

    def has_credentials(self) -> bool:
        """False when the provider needs a key and none could be read (skipped in execute mode)."""
        ...

    def stream(self, call: ProviderCall) -> AsyncGenerator[StreamEvent, None]:
        """Make the call; yield text deltas, then one StreamEnd."""
        ...

    async def aclose(self) -> None:
        """Close the connection pool; the client is unusable afterwards."""
        ...
