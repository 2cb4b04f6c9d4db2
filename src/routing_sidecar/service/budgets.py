"""Budgets around the core: the embedded ledger as a BudgetBook, and budget alerts."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from opentelemetry import trace

from routing_sidecar.core.budget import Ledger
from routing_sidecar.core.budget_rules import BudgetAlert, LedgerChange
from routing_sidecar.core.view import BudgetLine
from routing_sidecar.domain import BudgetRule, BudgetStatus, ModelSpec

log = logging.getLogger(__name__)

# The span event a threshold crossing adds to the span it happened in (Route, ReportOutcome).
BUDGET_ALERT_EVENT = "routing.budget.alert"


AlertHook = Callable[[BudgetAlert], None]


def log_alerts(alerts: Iterable[BudgetAlert], hook: AlertHook | None = None) -> None:
    """One structured warning per threshold crossing, an event on the current span, the hook."""
    for a in alerts:
        if hook is not None:
            hook(a)
        fields: dict[str, str | int] = {
            "scope": a.scope,
            "period": a.period.value,
            "state": a.state.value,
            "used_micros": a.used_micros,
            "limit_micros": a.rule.limit_micros,
        }
        log.warning("budget threshold crossed", extra=fields)
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(BUDGET_ALERT_EVENT,
                           {f"routing.budget.{k}": v for k, v in fields.items()})


class LocalBudgets:
    """The embedded ledger (core.budget.Ledger) as a BudgetBook.

    Its coroutines never suspend: awaiting one runs it to the end at once, so a decision's
    view and its reservation still happen with no other request in between.
    """

    unavailable: str | None = None

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def lines(self, labels: Mapping[str, str], model: ModelSpec, policy: str, task_id: str,
              now: float) -> tuple[BudgetLine, ...]:
        """Every budget a decision for the model falls under, with what it used."""
        return self.ledger.lines(labels, model, policy, task_id, now)

    def statuses_for(self, labels: Mapping[str, str], model: ModelSpec, policy: str,
                     task_id: str, now: float) -> list[BudgetStatus]:
        """Standing of every budget one decision falls under."""
        return self.ledger.statuses_for(labels, model, policy, task_id, now)

    def cached_status(self, now: float, scopes: Collection[str] = ()) -> list[BudgetStatus]:
        """Every scope's standing."""
        return self.ledger.status(now, scopes)

    async def status(self, now: float, scopes: Collection[str] = ()) -> list[BudgetStatus]:
        """Every scope's standing (the same: the totals live here)."""
        return self.ledger.status(now, scopes)

    async def reserve(self, reservation_id: str, labels: Mapping[str, str], model: ModelSpec,
                      policy: str, task_id: str, amount_micros: int, now: float,
                      expires_at: float) -> tuple[BudgetLine | None, LedgerChange]:
        """Hold the amount on every budget, if it fits."""
        return self.ledger.reserve(reservation_id, labels, model, policy, task_id,
                                   amount_micros, now, expires_at)

    async def settle(self, reservation_id: str, labels: Mapping[str, str], policy: str,
                     task_id: str, charges: Sequence[tuple[ModelSpec, int]], at: float,
                     now: float) -> LedgerChange:
        """Close the reservation and charge each attempt to its own budgets."""
        return self.ledger.settle(reservation_id, labels, policy, task_id, charges, at, now)

    async def release(self, reservation_id: str, now: float) -> LedgerChange:
        """Drop an open reservation without charging it."""
        return self.ledger.release(reservation_id, now)

    async def expire(self, now: float) -> LedgerChange:
        """Release reservations past their expiry."""
        return self.ledger.expire(now)

    async def revert(self, change: LedgerChange) -> None:
        """Undo a change whose rows failed to commit."""
        self.ledger.revert(change)

    def replace_rules(self, rules: Sequence[BudgetRule]) -> None:
        """Swap in reloaded rules, keeping every total and reservation."""
        self.ledger.replace_rules(rules)
