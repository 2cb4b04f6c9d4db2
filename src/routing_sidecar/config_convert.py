"""A validated config turned into the frozen settings the core and the services use."""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from routing_sidecar import domain
from routing_sidecar.config_base import usd_to_micros
from routing_sidecar.config_routing import (
    HealthConfig,
    LearningConfig,
    MatchConfig,
    ModelConfig,
    PolicyConfig,
)
from routing_sidecar.settings import (
    BreakerSettings,
    DemotionSettings,
    DetectionSettings,
    ExplorationSettings,
    HealthSettings,
    LearningSettings,
    LedgerSettings,
    RouterSettings,
)

if TYPE_CHECKING:
    from routing_sidecar.config import RouterConfig


def _model_spec(name: str, m: ModelConfig) -> domain.ModelSpec:
    return domain.ModelSpec(
        name=name,
        provider=m.provider,
        tier=m.tier,
        input_micros_per_mtok=usd_to_micros(m.input_per_mtok),
        output_micros_per_mtok=usd_to_micros(m.output_per_mtok),
        context_window=m.context_window,
        tokens_per_s=m.tokens_per_s,
        quality=m.quality,
        capabilities=frozenset(m.capabilities),
        origin=m.origin,
    )


def _policy(name: str, p: PolicyConfig) -> domain.Policy:
    return domain.Policy(
        name=name,
        models=tuple(p.models),
        objective=domain.Objective(p.objective) if p.objective else None,
        max_cost_per_task_micros=(
            usd_to_micros(p.max_cost_per_task_usd) if p.max_cost_per_task_usd else None
        ),
        max_output_tokens=p.max_output_tokens,
        fallbacks=p.fallbacks,
        temperature=p.temperature,
        retry=domain.RetryPolicy(
            p.retry.max_retries, p.retry.base_backoff_s, p.retry.max_backoff_s
        ),
        critical=p.critical,
        quality_floor=p.quality_floor,
        resume_on_stream_failure=p.resume_on_stream_failure,
        hedge_after_ms=p.hedge_after_ms,
    )


def _match(m: MatchConfig) -> domain.Match:
    types = (m.task_type,) if isinstance(m.task_type, str) else tuple(m.task_type or ())
    return domain.Match(
        task_types=types,
        priority_min=m.priority.min if m.priority else None,
        priority_max=m.priority.max if m.priority else None,
        labels=dict(m.labels),
    )


def _budget_rules(cfg: RouterConfig) -> tuple[domain.BudgetRule, ...]:
    """The configured budgets as rules, in file order, limits in micro-USD."""
    out = []
    for b in cfg.budgets:
        default = domain.BudgetPeriod.TASK if b.scope == "task" else domain.BudgetPeriod.MONTH
        period = domain.BudgetPeriod(b.period) if b.period else default
        out.append(domain.BudgetRule(b.scope, period, usd_to_micros(b.limit_usd), b.alert_at,
                                     domain.OnExceed(b.on_exceed)))
    return tuple(out)


def _health(h: HealthConfig) -> HealthSettings:
    return HealthSettings(
        h.ewma_alpha, h.window_s, BreakerSettings(**h.breaker.model_dump()),
        DetectionSettings(**h.detection.model_dump()), DemotionSettings(**h.demotion.model_dump()),
    )


def _learning(lc: LearningConfig) -> LearningSettings:
    return LearningSettings(
        lc.prior_strength, lc.pool_strength, lc.forget, lc.confidence, lc.max_task_types,
        ExplorationSettings(**lc.exploration.model_dump()),
    )


def to_settings(cfg: RouterConfig) -> RouterSettings:
    """Convert a validated config into the frozen settings the core and services use."""
    t = cfg.tiers
    return RouterSettings(
        models=MappingProxyType({n: _model_spec(n, m) for n, m in cfg.models.items()}),
        policies=MappingProxyType({n: _policy(n, p) for n, p in cfg.policies.items()}),
        rules=tuple(domain.Rule(_match(r.match), r.policy) for r in cfg.rules),
        shapes=tuple(domain.ShapeRule(_match(s.match), domain.Objective(s.objective))
                     for s in cfg.task_shapes),
        tiers=domain.TierRules(t.reserve_above, t.ev_percentile, t.priority_override,
                               t.ev_window, t.ev_min_samples),
        default_policy=cfg.default_policy,
        budgets=_budget_rules(cfg),
        health=_health(cfg.health),
        learning=_learning(cfg.learning),
        ledger=LedgerSettings(cfg.ledger.reservation_ttl_s, cfg.ledger.timezone),
        critical_lanes=frozenset(cfg.critical_lanes),
        outcomes=cfg.outcomes.limits(),
        cache=cfg.cache.settings(),
        limits=cfg.limits.settings(),
    )
