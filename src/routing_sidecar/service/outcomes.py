"""Outcomes: check what is claimed, record attempts, settle each to its own budgets, exactly once.

Two ways in, one way down. `report` takes an orchestrator's ReportOutcome: its claims are
bounded by `core/outcome_checks.py` first. `record` takes attempts the sidecar ran itself
(execute mode): trusted, so a provider's own cost is charged even above the catalog's estimate.
Both then write the same rows, settle the ledger the same way and feed health the same way.
A ReportOutcome carrying only a quality, for a decision whose outcome is already recorded,
grades it (`grade`): once, and it teaches learned quality about the model that answered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from routing_sidecar import domain
from routing_sidecar.core.budget_rules import NO_CHANGE
from routing_sidecar.core.catalog import Catalog
from routing_sidecar.core.outcome_checks import DEFAULT_LIMITS, CheckedAttempt, check_outcome
from routing_sidecar.errors import FailedPrecondition, NotFound, StorageError
from routing_sidecar.ports import AuditLog, BudgetBook, Clock
from routing_sidecar.quick_init import quick_init
from routing_sidecar.records import (
    AttemptRecord,
    DecisionRecord,
    GradeRecord,
    OutcomeRecord,
    PerformanceRecord,
    stored_fallbacks,
)
from routing_sidecar.service.budgets import AlertHook, log_alerts
from routing_sidecar.service.cache import CacheService
from routing_sidecar.service.learning import Learner
from routing_sidecar.settings import OutcomeLimits

HOUR_S = 3600.0


@quick_init
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
    # The outcome's cache_value is stored (durably) in the response cache.
    cache_stored: bool = False


def plan_of(record: DecisionRecord) -> dict[str, int]:
    """Estimated cost per model the decision named: the choice and its fallbacks."""
    est = {f["model"]: int(f["estimated_cost_micros"]) for f in stored_fallbacks(record)}
    if record.chosen_model:
        est[record.chosen_model] = record.estimated_cost_micros
    return est


def trusted(attempt: domain.Attempt, spec: domain.ModelSpec, plan: dict[str, int]
            ) -> CheckedAttempt:
    """An attempt the sidecar made itself: the provider's cost, else tokens x catalog prices."""
    cost = attempt.cost_micros
    if cost is None:
        cost = spec.cost_micros(attempt.input_tokens, attempt.output_tokens)
    return CheckedAttempt(attempt, cost, attempt.model not in plan)


def _performance(
    task_type: str, rows: Sequence[AttemptRecord], quality: float | None, now: float
) -> list[PerformanceRecord]:
    """The hourly (task type, model) window rows one outcome adds to."""
    window = now - now % HOUR_S
    out = []
    for i, a in enumerate(rows):
        final = i == len(rows) - 1
        graded = final and quality is not None
        ok = a.status is domain.AttemptStatus.SUCCESS
        out.append(PerformanceRecord(
            task_type, a.model, window, decisions=int(final), successes=int(ok),
            failures=int(not ok), quality_sum=(quality or 0.0) if graded else 0.0,
            quality_count=int(graded), latency_sum_s=a.duration_s,
            cost_sum_micros=a.actual_cost_micros,
        ))
    return out


class OutcomeService:
    """Turns outcomes (reported or executed) into audit rows, settled budgets and health."""

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
        self.cache: CacheService | None = None  # set by the app: stores `cache_value`s
        self._audit = audit
        self._clock = clock

    async def report(self, outcome: domain.Outcome) -> OutcomeAck:
        """Record an outcome once; a repeat changes nothing and says it was a duplicate.

        An outcome with a quality and no attempts, for a decision already recorded, is a grade.
        """
        if outcome.cache_value and self.cache is not None:
            self.cache.check_value("cache_value", outcome.cache_value)
        record = await self._audit.get_decision(outcome.decision_id)
        if record is None:
            raise NotFound(f"decision_id: no decision {outcome.decision_id!r}")
        if not outcome.attempts and outcome.quality is not None:
            recorded = await self._audit.get_outcome(record.decision_id)
            if recorded is not None:
                return await self.grade(record, recorded, outcome.quality)
        catalog = self._catalog()
        now = self._clock.now()
        checked = check_outcome(outcome, catalog, plan_of(record), record.decided_at, now,
                                self.limits)
        ack = await self.record(record, checked, outcome.success, outcome.quality)
        if ack.duplicate or not outcome.cache_value:
            return ack
        return replace(ack, cache_stored=await self._store_value(record, outcome,
                                                                 ack.actual_cost_micros))

    async def record(self, record: DecisionRecord, checked: Sequence[CheckedAttempt],
                     success: bool, quality: float | None = None, *, learn: bool = True,
                     ) -> OutcomeAck:
        """Write the attempts once, settle each to its own model's and provider's budgets.

        Every attempt feeds health and breakers; with `learn`, the outcome also teaches learned
        quality (execute mode passes False: an answer that arrived says nothing of how good
        it was, until the caller grades it). A repeat is undone and answered as a duplicate.
        """
        catalog = self._catalog()
        now = self._clock.now()
        plan = plan_of(record)
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
        result = OutcomeRecord(record.decision_id, success, quality, actual, now)
        try:
            fresh = await self._audit.record_outcome(
                record.decision_id, rows, result, change.entries,
                _performance(record.task_type, rows, quality, now))
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
        attempts = [c.attempt for c in checked]
        if learn:
            self._learner.observe(record.task_type, labels, attempts, success, quality, now)
        else:
            self._learner.observe_attempts(labels, attempts, now)
        return OutcomeAck(record.decision_id, actual, duplicate=False,
                          budgets=self._budgets(record, labels, catalog, now), decision=record,
                          attempts=tuple(rows))

    async def _store_value(self, record: DecisionRecord, outcome: domain.Outcome,
                           cost_micros: int) -> bool:
        """Decision mode: a successful outcome's value goes under its decision's cache key."""
        if self.cache is None or not outcome.cache_value or not outcome.success:
            return False
        done = [a for a in outcome.attempts if a.status is domain.AttemptStatus.SUCCESS]
        model = done[-1].model if done else record.chosen_model or ""
        provider = done[-1].provider if done else record.chosen_provider or ""
        return await self.cache.store_outcome(record.decision_id, outcome.cache_value,
                                              cost_micros, model, provider)

    async def grade(self, record: DecisionRecord, recorded: OutcomeRecord, quality: float
                    ) -> OutcomeAck:
        """Grade a recorded decision's answer once; it teaches learned quality of its model."""
        labels: dict[str, str] = json.loads(record.labels_json)
        catalog = self._catalog()
        now = self._clock.now()
        budgets = self._budgets(record, labels, catalog, now)
        duplicate = OutcomeAck(record.decision_id, recorded.actual_cost_micros, duplicate=True,
                               budgets=budgets, decision=record)
        if recorded.quality is not None:
            return duplicate  # the outcome itself carried a grade
        answered = [a for a in await self._audit.get_attempts(record.decision_id)
                    if a.status is domain.AttemptStatus.SUCCESS]
        if not answered:
            raise FailedPrecondition(
                f"quality: decision {record.decision_id!r} produced no answer to grade")
        model = answered[-1].model
        window = now - now % HOUR_S
        perf = PerformanceRecord(record.task_type, model, window, quality_sum=quality,
                                 quality_count=1)
        fresh = await self._audit.record_grade(
            GradeRecord(record.decision_id, model, quality, now), (perf,))
        if not fresh:
            return duplicate
        self._learner.grade(record.task_type, model, recorded.success, quality)
        return OutcomeAck(record.decision_id, recorded.actual_cost_micros, duplicate=False,
                          budgets=budgets, decision=record)

    def _budgets(self, record: DecisionRecord, labels: dict[str, str], catalog: Catalog,
                 now: float) -> tuple[domain.BudgetStatus, ...]:
        model = catalog.models.get(record.chosen_model or "")
        if model is None:
            return ()
        return tuple(self._ledger.statuses_for(labels, model, record.policy, record.task_id,
                                               now))
