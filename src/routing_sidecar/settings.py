"""Frozen settings the core and services run on, converted from the validated config.

`config.py` validates the YAML with pydantic and converts it into these objects; nothing below
the composition root sees pydantic. Defaults live here once: the config models take theirs
from these classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from routing_sidecar.domain import (
    BudgetRule,
    ModelSpec,
    Policy,
    Rule,
    ShapeRule,
    TierRules,
)


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """When a model's or provider's circuit opens and how long it stays open."""

    consecutive_failures: int = 5
    error_rate: float = 0.5
    min_volume: float = 10.0
    cooldown_s: float = 30.0
    max_cooldown_s: float = 300.0
    probe_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class DetectionSettings:
    """Thresholds of the per-provider and per-lane detection states."""

    elevated_fallback_rate: float = 0.1
    degraded_error_rate: float = 0.25
    idle_after_s: float = 900.0
    min_volume: float = 5.0


@dataclass(frozen=True, slots=True)
class DemotionSettings:
    """How much slow or failing models lose in scoring, scaled by the evidence."""

    error_weight: float = 0.5
    slowness_weight: float = 0.2
    evidence: float = 10.0
    max_penalty: float = 0.5


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """Per-model and per-provider health: EWMAs, decaying windows, breakers, detection."""

    ewma_alpha: float = 0.2
    window_s: float = 300.0
    breaker: BreakerSettings = BreakerSettings()
    detection: DetectionSettings = DetectionSettings()
    demotion: DemotionSettings = DemotionSettings()


@dataclass(frozen=True, slots=True)
class ExplorationSettings:
    """Bounded exploration of models not yet proven for a task type."""

    enabled: bool = True
    max_share: float = 0.1
    min_samples_to_prove: float = 5.0


@dataclass(frozen=True, slots=True)
class LearningSettings:
    """Learned quality per (task type, model): priors, pooling, forgetting, exploration."""

    prior_strength: float = 20.0
    # What a task type's own prior (each model's pooled estimate) is worth, in observations.
    pool_strength: float = 8.0
    forget: float = 0.995
    confidence: float = 0.8
    max_task_types: int = 4096
    exploration: ExplorationSettings = ExplorationSettings()


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    """Budget ledger settings shared by every budget."""

    reservation_ttl_s: float = 900.0
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class OutcomeLimits:
    """How far a reported outcome may go before it is refused."""

    max_attempts: int = 16
    # A reported cost may exceed its tokens at catalog prices by this factor (provider
    # surcharges, cache writes, reasoning tokens billed apart), plus a fixed slack.
    cost_tolerance: float = 1.5
    cost_slack_micros: int = 10_000
    # How far the orchestrator's clock may run ahead of, or behind, the sidecar's.
    clock_skew_s: float = 300.0


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The response cache: bounds, lifetime, tenancy and which requests may be stored."""

    enabled: bool = True
    ttl_s: float = 86_400.0
    max_entries: int = 100_000
    max_bytes: int = 256 * 1024 * 1024
    max_value_bytes: int = 256 * 1024  # a decision-mode `cache_value`, an execute-mode answer
    partition_labels: tuple[str, ...] = ("project",)
    # Only requests at temperature 0 are stored and served unless they opt in.
    deterministic_only: bool = True
    sweep_interval_s: float = 10.0  # expiry, LRU eviction, hit counts flushed


# Labels whose values name budget scopes (project:X, worker:X), normalised alike on both sides.
SCOPE_LABELS = ("project", "worker")
_DEFAULT_CAPS: Mapping[str, int] = MappingProxyType(
    {"project": 1000, "worker": 1000, "lane": 100, "layer": 1000})


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """Caps on the distinct label values callers may introduce, and how scope labels compare."""

    # Label key -> the most distinct values admitted; keys not named are not capped.
    caps: Mapping[str, int] = field(default_factory=lambda: _DEFAULT_CAPS)
    # `project` and `worker` values (and the config's project:/worker: scopes) case-folded.
    casefold_scope_labels: bool = True


_NO_MODELS: Mapping[str, ModelSpec] = MappingProxyType({})
_NO_POLICIES: Mapping[str, Policy] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RouterSettings:
    """Everything derived from one config file that routing, budgets and learning run on."""

    models: Mapping[str, ModelSpec] = field(default_factory=lambda: _NO_MODELS)
    policies: Mapping[str, Policy] = field(default_factory=lambda: _NO_POLICIES)
    rules: tuple[Rule, ...] = ()
    shapes: tuple[ShapeRule, ...] = ()
    tiers: TierRules = field(default_factory=TierRules)
    default_policy: str = ""
    budgets: tuple[BudgetRule, ...] = ()
    health: HealthSettings = HealthSettings()
    learning: LearningSettings = LearningSettings()
    ledger: LedgerSettings = LedgerSettings()
    critical_lanes: frozenset[str] = frozenset()
    outcomes: OutcomeLimits = OutcomeLimits()
    cache: CacheSettings = CacheSettings()
    limits: LimitSettings = LimitSettings()
