"""ReportOutcome: check, record attempts, settle each to its own budgets, exactly once."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from routing_sidecar import domain
from routing_sidecar.core.budget_rules import NO_CHANGE
from routing_sidecar.core.catalog import Catalog
from routing_sidecar.core.outcome_checks import DEFAULT_LIMITS, check_outcome
from routing_sidecar.errors import NotFound, StorageError
from routing_sidecar.ports import (
    AttemptRecord,
    AuditLog,
    BudgetBook,
    Clock,
    DecisionRecord,
    OutcomeRecord,
    PerformanceRecord,
)
from routing_sidecar.service.budgets import AlertHook, log_alerts
from routing_sidecar.service.learning import Learner
from routing_sidecar.settings import OutcomeLimits

HOUR_S = 3600.0


@dataclass(frozen=True, slots=True)
class OutcomeAck:
    """What ReportOutcome answers."""

    decision_id: str
    actual_cost_micros: int
    duplicate: bool
    budgets: tuple[domain.BudgetStatus, ...] = ()
    # What observers need to describe the outcome: the audited decision and each attempt row.
    decision: DecisionRecord | None = None
    attempts: tuple[AttemptRecord, ...] = ()


def plan_of(record: DecisionRecord) -> dict[str, int]:
    """Estimated cost per model the decision named: the choice and its fallbacks."""
    est = {f["model"]: int(f["estimated_cost_micros"]) for f in json.loads(record.fallbacks_json)}
    if record.chosen_model:
        est[record.chosen_model] = record.estimated_cost_micros
    return est


def _performance(
    task_type: str, rows: list[AttemptRecord], outcome: domain.Outcome, now: float
) -> list[PerformanceRecord]:
    """The hourly (task type, model) window rows one outcome adds to."""
    window = now - now % HOUR_S
    out = []
    for i, a in enumerate(rows):
        final = i == len(rows) - 1
        graded = final and outcome.quality is not None
        ok = a.status is domain.AttemptStatus.SUCCESS
        out.append(PerformanceRecord(
            task_type, a.model, window, decisions=int(final), successes=int(ok),
            failures=int(not ok), quality_sum=(outcome.quality or 0.0) if graded else 0.0,
            quality_count=int(graded), latency_sum_s=a.duration_s,
            cost_sum_micros=a.actual_cost_micros,
        ))
    return out


class OutcomeService:
    """Turns reported outcomes into audit rows and settled budgets."""

    def __init__(
        self,
        catalog: Callable[[], Catalog],
        ledger: BudgetBook,
        audit: AuditLog,
        clock: Clock,
        learner: Learner,
        limits: OutcomeLimits = DEFAULT_LIMITS,
    ) -> None:
        self._catalog = catalog
        self._ledger = ledger
        self._learner = learner
        self.limits = limits
        self.alert_hook: AlertHook | None = None  # set by the app to count crossings
        self._audit = audit
        self._clock = clock

    async def report(self, outcome: domain.Outcome) -> OutcomeAck:
        """Record an outcome once; a repeat changes nothing and says it was a duplicate."""
        catalog = self._catalog()
        record = await self._audit.get_decision(outcome.decision_id)
        if record is None:
            raise NotFound(f"decision_id: no decision {outcome.decision_id!r}")
        now = self._clock.now()
        plan = plan_of(record)
        checked = check_outcome(outcome, catalog, plan, record.decided_at, now, self.limits)
        labels: dict[str, str] = json.loads(record.labels_json)
        rows = [AttemptRecord.from_attempt(record.decision_id, i, c.attempt,
                                           plan.get(c.attempt.model, 0), c.cost_micros,
                                           c.off_plan)
                for i, c in enumerate(checked)]
        actual = sum(c.cost_micros for c in checked)
        change = NO_CHANGE
        if not record.dry_run:
            change = await self._ledger.settle(
                record.decision_id, labels, record.policy, record.task_id,
                [(catalog.models[c.attempt.model], c.cost_micros) for c in checked],
                record.decided_at, now)
        result = OutcomeRecord(record.decision_id, outcome.success, outcome.quality, actual, now)
        try:
            fresh = await self._audit.record_outcome(
                record.decision_id, rows, result, change.entries,
                _performance(record.task_type, rows, outcome, now))
        except StorageError:
            await self._ledger.revert(change)
            raise
        if not fresh:
            # A repeat (or the loser of a race with the first report): undo its charges and
            # answer with what was recorded the first time.
            await self._ledger.revert(change)
            recorded = await self._audit.get_outcome(record.decision_id)
            return OutcomeAck(record.decision_id,
                              recorded.actual_cost_micros if recorded else actual,
                              duplicate=True, budgets=self._budgets(record, labels, catalog, now),
                              decision=record)
        log_alerts(change.alerts, self.alert_hook)
        self._learner.observe(record.task_type, labels, [c.attempt for c in checked],
                              outcome.success, outcome.quality, now)
        return OutcomeAck(record.decision_id, actual, duplicate=False,
                          budgets=self._budgets(record, labels, catalog, now), decision=record,
                          attempts=tuple(rows))

    def _budgets(self, record: DecisionRecord, labels: dict[str, str], catalog: Catalog,
                 now: float) -> tuple[domain.BudgetStatus, ...]:
        model = catalog.models.get(record.chosen_model or "")
        if model is None:
            return ()
        return tuple(self._ledger.statuses_for(labels, model, record.policy, record.task_id,
                                               now))

