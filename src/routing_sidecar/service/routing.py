"""Route: validate against the catalog, decide, reserve budget, audit, then answer."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from routing_sidecar import domain
from routing_sidecar.core.budget import Ledger
from routing_sidecar.core.budget_rules import LedgerEntry
from routing_sidecar.core.catalog import Catalog
from routing_sidecar.core.rules import resolve_policy
from routing_sidecar.core.selection import Signals, select
from routing_sidecar.errors import Internal, InvalidArgument, StorageError
from routing_sidecar.ports import AuditLog, Clock, DecisionRecord
from routing_sidecar.service.budgets import AlertHook, apply_on_exceed, log_alerts
from routing_sidecar.service.ev import EvWindow
from routing_sidecar.service.learning import Learner
from routing_sidecar.service.pauses import ModelPauses


def new_decision_id() -> str:
    """A random, unguessable decision id."""
    return uuid.uuid4().hex


def check_task(task: domain.Task, catalog: Catalog) -> None:
    """Reject references the catalog does not know, naming the field."""
    for i, slot in enumerate(task.available_slots):
        if slot.model not in catalog.models:
            raise InvalidArgument(f"available_slots[{i}].model", f"unknown model {slot.model!r}")


@dataclass(frozen=True, slots=True)
class TraceIds:
    """W3C trace and span ids (hex) of the span a decision was made in; empty when untraced."""

    trace_id: str = ""
    span_id: str = ""


NO_TRACE = TraceIds()


def best_estimate(
    task: domain.Task, catalog: Catalog, signals: Signals, blocked: domain.Selection
) -> domain.Selection:
    """When no model is proven above the quality floor, judge by the estimate itself.

    Refusing would keep every model unproven forever at a high floor; routing to a model
    whose estimated quality meets the floor lets its outcome prove or disprove it. Budgets,
    breakers and every other filter still apply; a floor no estimate meets still rejects.
    """
    if not any(a.rejection is domain.Rejection.QUALITY for a in blocked.alternatives):
        return blocked
    relaxed = select(task, catalog, dataclasses.replace(signals, quality_check=None))
    if relaxed.chosen is None:
        return blocked
    return dataclasses.replace(
        relaxed,
        reason=f"{relaxed.reason} No model is proven above the quality floor yet, so the "
        "choice rests on estimated quality alone.",
    )


class RoutingService:
    """Decides tasks, holds their budget, and audits every decision before answering."""

    def __init__(
        self,
        catalog: Catalog,
        clock: Clock,
        ledger: Ledger,
        audit: AuditLog,
        learner: Learner,
        *,
        config_hash: str = "",
        reservation_ttl_s: float = 900.0,
        new_id: Callable[[], str] = new_decision_id,
    ) -> None:
        self.catalog = catalog
        self.ledger = ledger
        self.learner = learner
        self.alert_hook: AlertHook | None = None  # set by the app to count crossings
        self.pauses = ModelPauses()  # models an operator took out of routing
        self.config_hash = config_hash
        self.reservation_ttl_s = reservation_ttl_s
        self._audit = audit
        self._clock = clock
        self._new_id = new_id
        tiers = catalog.tiers
        self.ev_window = EvWindow(tiers.ev_window, tiers.ev_percentile, tiers.ev_min_samples)

    def decide(
        self, task: domain.Task, trace: TraceIds = NO_TRACE
    ) -> tuple[domain.Decision, DecisionRecord, tuple[LedgerEntry, ...]]:
        """Decide and reserve synchronously: no await, so no other request interleaves."""
        check_task(task, self.catalog)
        now = self._clock.now()
        selection, policy = self._select(task, now)
        decision_id = self._new_id()
        entries: tuple[LedgerEntry, ...] = ()
        budgets: tuple[domain.BudgetStatus, ...] = ()
        chosen = selection.chosen
        if chosen is not None:
            model = self.catalog.models[chosen.model]
            if not task.dry_run:
                entries = self._reserve(decision_id, task, model, policy, chosen, now)
            budgets = tuple(self.ledger.statuses_for(task.labels, model, policy, now))
        decision = domain.Decision(
            decision_id=decision_id,
            task_id=task.task_id,
            decided_at=now,
            selection=selection,
            dry_run=task.dry_run,
            budgets=budgets,
        )
        record = DecisionRecord.from_decision(
            decision, task, self.config_hash, trace.trace_id, trace.span_id
        )
        return decision, record, entries

    def _select(self, task: domain.Task, now: float) -> tuple[domain.Selection, str]:
        """Run the core with budgets, breakers and learned quality; returns it and the policy."""
        policy = resolve_policy(task, self.catalog)
        gate = self.learner.gate(task, policy)
        health = self.learner.health
        signals = Signals(
            ev_threshold=self.ev_window.threshold(),
            capability_filters=(self.pauses.as_filter(), health.as_filter(now)),
            cost_filters=(self.ledger.as_filter(policy.name, now),),
            quality=self.learner.quality.quality,
            penalty=health.penalty_fn(now),
            quality_check=gate,
        )
        selection = select(task, self.catalog, signals)
        selection = apply_on_exceed(
            task, self.catalog, signals, self.ledger, policy.name, now, selection
        )
        selection = gate.annotate(selection)
        unproven = selection.chosen is None and not self.learner.is_critical(task, policy)
        if unproven:
            selection = best_estimate(task, self.catalog, signals, selection)
        chosen = selection.chosen
        self.learner.after_decision(
            task, selection, gate, self.catalog.models[chosen.model] if chosen else None, now,
            explored=unproven and chosen is not None,
        )
        # The task's own EV joins the window after it is judged, so it never raises its own bar.
        if task.ev is not None:
            self.ev_window.add(task.ev)
        return selection, policy.name

    def _reserve(
        self, decision_id: str, task: domain.Task, model: domain.ModelSpec, policy: str,
        chosen: domain.Alternative, now: float,
    ) -> tuple[LedgerEntry, ...]:
        result = self.ledger.reserve(
            decision_id, task.labels, model, policy, chosen.estimated_cost_micros,
            now, now + self.reservation_ttl_s,
        )
        if not result.ok:
            # Unreachable while check and reserve share one synchronous step; if that ever
            # breaks, fail loudly rather than answer with an unreserved decision.
            raise Internal("budget reservation failed after the budget check passed")
        log_alerts(result.alerts, self.alert_hook)
        return result.entries

    async def route(self, task: domain.Task, trace: TraceIds = NO_TRACE) -> domain.Decision:
        """Decide one task; acknowledged only once its audit row and reservation commit.

        `trace` names the caller's span so ReportOutcome can attach attempt spans to it later.
        """
        decision, record, entries = self.decide(task, trace)
        try:
            await self._audit.record_decision(record, entries)
        except StorageError:
            self.ledger.revert(entries)
            raise
        return decision
