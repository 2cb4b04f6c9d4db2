"""Budget alerts around the core: one structured warning and span event per crossing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from opentelemetry import trace

from routing_sidecar.core.budget_rules import BudgetAlert

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
