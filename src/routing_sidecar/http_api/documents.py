"""The read API's documents, built from the ledger, the audit trail and the learner.

The matrix's decisions and $/decision are the audit trail's `routing_stats`, the same query
GetRoutingStats and `report` answer from; health and learned quality are the learner's
report; budgets are the ledger's status. The dashboard page renders these same documents.
"""

from __future__ import annotations

import json
import math
from typing import Any

from routing_sidecar import domain
from routing_sidecar.errors import StorageError
from routing_sidecar.http_api import views as v
from routing_sidecar.http_api.backend import Backend
from routing_sidecar.ports import ActivityBucket, AuditedDecision
from routing_sidecar.records import stored_alternatives, stored_fallbacks

HOUR_S = 3600.0
MINUTE_S = 60.0
TASK_TYPE = "task_type"


def _utilisation(b: domain.BudgetStatus) -> float:
    return (b.spent_micros + b.reserved_micros) / b.limit_micros if b.limit_micros else 0.0


async def costs(b: Backend) -> v.Costs:
    """Every budget scope in its current period, read where the totals live."""
    now = b.clock.now()
    budgets = [
        v.Budget(scope=s.scope, period=s.period.value, limit_micros=s.limit_micros,
                 spent_micros=s.spent_micros, reserved_micros=s.reserved_micros,
                 remaining_micros=s.remaining_micros, utilisation=_utilisation(s),
                 state=s.state.value, period_start=v.at_or_none(s.period_start),
                 period_end=v.at_or_none(s.period_end))
        for s in await b.routing.ledger.status(now)
    ]
    return v.Costs(generated_at=v.at(now), budgets=budgets, cache=await _cache(b, now))


async def _cache(b: Backend, now: float) -> v.CacheStats:
    """The response cache's hits, misses and savings over the last day, as `cache stats`."""
    cache = b.routing.cache
    if cache is None or not cache.settings.enabled:
        return v.CacheStats()
    try:
        report = await cache.report(now - 24 * HOUR_S)
    except StorageError as exc:
        return v.CacheStats(enabled=True, note=f"the cache cannot answer: {exc.message}")
    hits = sum(u.hits for u in report.usage)
    misses = sum(u.misses for u in report.usage)
    return v.CacheStats(
        enabled=True, hits=hits, misses=misses,
        hit_rate=hits / (hits + misses) if hits + misses else 0.0,
        saved_micros=sum(u.saved_micros for u in report.usage),
        note=f"last 24 h; {report.footprint.entries} entries in {report.backend}")


async def matrix(b: Backend, hours: int, by: str = TASK_TYPE) -> v.Matrix:
    """Model x task type (or x label value) over the last `hours`, and provider economics."""
    now = b.clock.now()
    since = now - hours * HOUR_S
    label = None if by == TASK_TYPE else by
    stats = await b.store.routing_stats(since, (label,) if label else ())
    fallbacks = {(c.model, c.value): c.fallback_decisions
                 for c in await b.store.fallback_cells(since, label)}
    raw = ([(c.model, c.task_type, c) for c in stats.by_model_task] if label is None else
           [(c.model, c.label_value, c) for c in stats.by_model_label if c.label_key == label])
    cells = [
        v.Cell(model=model, value=value, decisions=c.decisions,
               estimated_cost_micros_per_decision=c.estimated_per_decision,
               actual_cost_micros_per_decision=c.actual_per_decision,
               fallback_decisions=fallbacks.get((model, value), 0),
               fallback_rate=fallbacks.get((model, value), 0) / c.decisions if c.decisions
               else 0.0)
        for model, value, c in raw
    ]
    report = b.routing.learner.report(now, b.routing.catalog.providers())
    seen = {p.provider for p in stats.by_provider}
    providers = [
        v.ProviderRow(provider=p.provider, decisions=p.decisions, fallback_rate=p.fallback_rate,
                      error_rate=p.error_rate, input_tokens=p.input_tokens,
                      output_tokens=p.output_tokens, spend_micros=p.spend_micros,
                      blended_cost_micros_per_mtok=p.blended_cost_micros_per_mtok,
                      detection_state=_state(report.detection.get(f"provider:{p.provider}")))
        for p in stats.by_provider
    ]
    # Providers without traffic in the window are listed too: "idle" is worth seeing.
    providers += [
        v.ProviderRow(provider=name, decisions=0, fallback_rate=0.0, error_rate=0.0,
                      input_tokens=0, output_tokens=0, spend_micros=0,
                      blended_cost_micros_per_mtok=0, detection_state=_state(state))
        for key, state in sorted(report.detection.items())
        if key.startswith("provider:") and (name := key.removeprefix("provider:")) not in seen
    ]
    return v.Matrix(
        window_start=v.at(since), window_end=v.at(now), hours=hours,
        by=by, models=sorted({c.model for c in cells}), values=sorted({c.value for c in cells}),
        cells=cells, providers=providers, label_keys=await b.store.label_keys(since),
    )


def _state(detection: object) -> str:
    return str(getattr(detection, "value", detection or ""))


def _rate(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def performance(b: Backend) -> v.Performance:
    """Live health rows, detection states, learned quality, breakers and pauses."""
    now = b.clock.now()
    routing = b.routing
    health = routing.learner.health
    report = routing.learner.report(now, routing.catalog.providers())
    paused = b.operator.pauses.paused
    models = []
    for name, m in sorted(routing.catalog.models.items()):
        breaker = health.breaker(f"model:{name}", now)
        pause = paused.get(name)
        models.append(v.ModelState(
            name=name, provider=m.provider, tier=m.tier, breaker=breaker.status.value,
            open_until=v.at_or_none(breaker.open_until), paused=pause is not None,
            paused_at=v.at(pause.paused_at) if pause else None,
            pause_reason=pause.reason if pause else ""))
    providers = []
    for name in routing.catalog.providers():
        breaker = health.breaker(f"provider:{name}", now)
        providers.append(v.ProviderState(
            name=name, breaker=breaker.status.value, open_until=v.at_or_none(breaker.open_until),
            detection_state=_state(report.detection.get(f"provider:{name}"))))
    rows = [
        v.HealthRow(
            scope=h.scope.value, name=h.name, volume=_rate(h.volume),
            success_rate=_rate(h.success_rate), transient_rate=_rate(h.transient_rate),
            permanent_rate=_rate(h.permanent_rate), timeout_rate=_rate(h.timeout_rate),
            rate_limited_rate=_rate(h.rate_limited_rate), fallback_rate=_rate(h.fallback_rate),
            latency_ewma_s=h.latency_ewma_s, tokens_per_s=h.tokens_per_s,
            breaker=h.breaker.value, open_until=v.at_or_none(h.open_until),
            detection_state=h.detection.value if h.detection else None,
            last_seen=v.at_or_none(h.last_seen))
        for h in report.health
    ]
    learned = [v.Learned(task_type=q.task_type, model=q.model, mean=_rate(q.mean),
                         lower_bound=_rate(q.lower_bound), samples=_rate(q.samples))
               for q in report.learned]
    return v.Performance(
        generated_at=v.at(now), models=models, providers=providers,
        detection={k: _state(s) for k, s in report.detection.items()}, health=rows,
        learned=learned)


def _known(model: type[v.View], row: dict[str, Any]) -> dict[str, Any]:
    """The stored row's fields the document has (rows written by newer builds carry more)."""
    return {k: x for k, x in row.items() if k in model.model_fields}


def decision_item(view: AuditedDecision) -> v.DecisionItem:
    """One audited decision as the API shows it."""
    d = view.decision
    alternatives = [v.Alternative(**{**_known(v.Alternative, a),
                                     "chosen": a["rejection"] == domain.Rejection.CHOSEN})
                    for a in stored_alternatives(d)]
    attempts = [
        v.Attempt(index=a.attempt_index, model=a.model, provider=a.provider,
                  status=a.status.value, error_type=a.error_type,
                  started_at=v.at_or_none(a.started_at),
                  duration_s=a.duration_s, input_tokens=a.input_tokens,
                  output_tokens=a.output_tokens, estimated_cost_micros=a.estimated_cost_micros,
                  actual_cost_micros=a.actual_cost_micros)
        for a in view.attempts
    ]
    o = view.outcome
    outcome = None if o is None else v.OutcomeView(
        success=o.success, quality=o.quality, actual_cost_micros=o.actual_cost_micros,
        reported_at=v.at(o.reported_at))
    return v.DecisionItem(
        decision_id=d.decision_id, task_id=d.task_id, task_type=d.task_type,
        status=d.status.value, reason_code=d.reason_code.value, model=d.chosen_model,
        provider=d.chosen_provider, slot_id=d.chosen_slot_id, tier=d.tier, policy=d.policy,
        objective=d.objective.value, estimated_cost_micros=d.estimated_cost_micros,
        reason=d.reason, labels=json.loads(d.labels_json), dry_run=d.dry_run,
        decided_at=v.at(d.decided_at), config_hash=d.config_hash,
        trace_id=d.trace_id, alternatives=alternatives,
        fallbacks=[v.Fallback(**_known(v.Fallback, f)) for f in stored_fallbacks(d)],
        outcome=outcome, attempts=attempts)


async def decisions(b: Backend, limit: int, model: str | None = None,
                    task_type: str | None = None) -> v.Decisions:
    """The most recent decisions, newest first."""
    found = await b.store.list_decisions(limit, model, task_type)
    return v.Decisions(decisions=[decision_item(d) for d in found])


def _series(buckets: list[ActivityBucket], start: float, end: float,
            size: float) -> list[v.Point]:
    """Every bucket from `start` to `end`, zero where nothing happened."""
    by_start = {round(x.start / size): x for x in buckets}
    first, last = math.floor(start / size), math.floor(end / size)
    out = []
    for n in range(first, last + 1):
        x = by_start.get(n, ActivityBucket(n * size))
        out.append(v.Point(start=v.at(n * size), decisions=x.decisions,
                           estimated_cost_micros=x.estimated_cost_micros,
                           spend_micros=x.spend_micros))
    return out


async def activity(b: Backend) -> v.Activity:
    """Decisions per minute over the last hour and spend per hour over the last day."""
    now = b.clock.now()
    minute_start = math.floor(now / MINUTE_S) * MINUTE_S - 59 * MINUTE_S
    hour_start = math.floor(now / HOUR_S) * HOUR_S - 23 * HOUR_S
    minutes = await b.store.activity(minute_start, MINUTE_S)
    hours = await b.store.activity(hour_start, HOUR_S)
    return v.Activity(decisions_per_minute=_series(minutes, minute_start, now, MINUTE_S),
                      spend_per_hour=_series(hours, hour_start, now, HOUR_S))


def policies(b: Backend) -> v.Policies:
    """Every policy now routing, where it comes from, the rules, the recent edits."""
    cfg = b.config()
    editor = b.policies
    out = []
    for name, policy in cfg.policies.items():
        change = editor.latest.get(name)
        out.append(v.PolicyView(
            name=name, source="api" if change else "file",
            in_file=name in editor.file_cfg.policies, version=change.version if change else None,
            changed_at=v.at(change.changed_at) if change else None, config=policy))
    changes = [v.PolicyChangeView(version=c.version, policy=c.policy, action=c.action,
                                  config_hash=c.config_hash,
                                  changed_at=v.at(c.changed_at))
               for c in reversed(editor.changes)]
    return v.Policies(config_hash=b.routing.state.config_hash, default_policy=cfg.default_policy,
                      policies=out, rules=list(cfg.rules), changes=changes)
