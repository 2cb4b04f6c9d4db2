"""Budget enforcement around the core: on_exceed semantics, alerts, expiry upkeep."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable

from opentelemetry import trace

from routing_sidecar import domain
from routing_sidecar.core.budget import Ledger
from routing_sidecar.core.budget_rules import BudgetAlert
from routing_sidecar.core.catalog import Catalog
from routing_sidecar.core.selection import Signals, select
from routing_sidecar.domain import OnExceed, ReasonCode, Rejection, Selection

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


def apply_on_exceed(
    task: domain.Task,
    catalog: Catalog,
    signals: Signals,
    ledger: Ledger,
    policy: str,
    now: float,
    constrained: Selection,
) -> Selection:
    """Honour each budget's on_exceed when budgets moved the task off its preferred model.

    `downgrade` keeps the cheaper choice and says so; `reject` refuses the task outright, so a
    project over its limit never quietly runs on a lesser model.
    """
    if not any(a.rejection is Rejection.BUDGET for a in constrained.alternatives):
        return constrained
    free = select(task, catalog, dataclasses.replace(signals, cost_filters=()))
    preferred = free.chosen
    if preferred is None or (
        constrained.chosen is not None and constrained.chosen.model == preferred.model
    ):
        return constrained
    block = ledger.check(
        task.labels, catalog.models[preferred.model], policy, preferred.estimated_cost_micros, now
    )
    if block is None:  # pragma: no cover - the free choice was dropped by a budget filter
        return constrained
    if block.rule.on_exceed is OnExceed.DOWNGRADE and constrained.chosen is not None:
        return dataclasses.replace(
            constrained,
            reason_code=ReasonCode.DOWNGRADED,
            reason=f"{constrained.reason} Downgraded from {preferred.model}: {block.reason}.",
        )
    note = f"not used: {block.reason} and that budget rejects rather than downgrades"
    return dataclasses.replace(
        constrained,
        status=domain.DecisionStatus.REJECTED,
        reason_code=ReasonCode.BUDGET_EXHAUSTED,
        reason=f"{task.task_type} rejected under policy {policy}: {preferred.model} is over "
        f"budget ({block.reason}; on_exceed reject).",
        chosen=None,
        fallbacks=(),
        alternatives=tuple(
            dataclasses.replace(a, rejection=Rejection.BUDGET, reason=note)
            if a.rejection in (Rejection.CHOSEN, Rejection.FALLBACK)
            else a
            for a in constrained.alternatives
        ),
    )
