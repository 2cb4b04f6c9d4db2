"""ReportOutcome: record attempts, settle the reservation at the actual cost, exactly once."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from routing_sidecar import domain
from routing_sidecar.core.budget import Ledger
from routing_sidecar.core.catalog import Catalog
from routing_sidecar.errors import InvalidArgument, NotFound, StorageError
from routing_sidecar.ports import (
    AttemptRecord,
    AuditLog,
    Clock,
    DecisionRecord,
    OutcomeRecord,
    PerformanceRecord,
)
from routing_sidecar.service.budgets import AlertHook, log_alerts
from routing_sidecar.service.learning import Learner

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


def check_attempts(outcome: domain.Outcome, catalog: Catalog) -> tuple[domain.Attempt, ...]:
    """Refuse attempts on models the catalog does not know; fill in missing providers."""
    out = []
    for i, a in enumerate(outcome.attempts):
        spec = catalog.models.get(a.model)
        if spec is None:
            raise InvalidArgument(f"attempts[{i}].model", f"unknown model {a.model!r}")
        if a.provider and a.provider != spec.provider:
            raise InvalidArgument(
                f"attempts[{i}].provider",
                f"model {a.model!r} is served by {spec.provider!r}, not {a.provider!r}",
            )
        out.append(a if a.provider else _with_provider(a, spec.provider))
    return tuple(out)


def _with_provider(a: domain.Attempt, provider: str) -> domain.Attempt:
    return domain.Attempt(
        a.model, provider, a.status, a.error_type, a.started_at, a.duration_s,
        a.input_tokens, a.output_tokens, a.cost_micros, a.retry_after_s,
    )


def _estimates(record: DecisionRecord) -> dict[str, int]:
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
        ledger: Ledger,
        audit: AuditLog,
        clock: Clock,
        learner: Learner,
    ) -> None:
        self._catalog = catalog
        self._ledger = ledger
        self._learner = learner
        self.alert_hook: AlertHook | None = None  # set by the app to count crossings
        self._audit = audit
        self._clock = clock

    async def report(self, outcome: domain.Outcome) -> OutcomeAck:
        """Record an outcome once; a repeat changes nothing and says it was a duplicate."""
        catalog = self._catalog()
        attempts = check_attempts(outcome, catalog)
        record = await self._audit.get_decision(outcome.decision_id)
        if record is None:
            raise NotFound(f"decision_id: no decision {outcome.decision_id!r}")
        now = self._clock.now()
        labels: dict[str, str] = json.loads(record.labels_json)
        estimates = _estimates(record)
        rows, actual = [], 0
        for i, a in enumerate(attempts):
            cost = a.cost_micros
            if cost is None:
                cost = catalog.models[a.model].cost_micros(a.input_tokens, a.output_tokens)
            actual += cost
            rows.append(
                AttemptRecord.from_attempt(
                    record.decision_id, i, a, estimates.get(a.model, 0), cost
                )
            )
        change = None
        if not record.dry_run:
            charges = [(catalog.models[a.model], r.actual_cost_micros)
                       for a, r in zip(attempts, rows, strict=True)]
            change = self._ledger.settle_attempts(
                record.decision_id, labels, record.policy, charges, now
            )
        entries = change.entries if change else ()
        result = OutcomeRecord(record.decision_id, outcome.success, outcome.quality, actual, now)
        performance = _performance(record.task_type, rows, outcome, now)
        try:
            fresh = await self._audit.record_outcome(
                record.decision_id, rows, result, entries, performance
            )
        except StorageError:
            self._ledger.revert(entries)
            raise
        if change:
            log_alerts(change.alerts, self.alert_hook)
        if fresh:
            self._learner.observe(
                record.task_type, labels, attempts,
                outcome.success, outcome.quality, now,
            )
        budgets = self._budgets(record, labels, catalog, now)
        return OutcomeAck(
            record.decision_id, actual, duplicate=not fresh, budgets=budgets,
            decision=record, attempts=tuple(rows),
        )

    def _budgets(
        self, record: DecisionRecord, labels: dict[str, str], catalog: Catalog, now: float
    ) -> tuple[domain.BudgetStatus, ...]:
        if not record.chosen_model or record.chosen_model not in catalog.models:
            return ()
        model = catalog.models[record.chosen_model]
        return tuple(self._ledger.statuses_for(labels, model, record.policy, now))
