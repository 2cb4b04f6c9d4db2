"""The sections routing runs on.

Models, policies, rules, budgets, tiers, health, learning, outcomes, cache and label limits.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
)

from routing_sidecar.config_base import (
    DAY_S,
    LABEL_KEY_RE,
    MAX_COUNT,
    MAX_TOKENS,
    MAX_USD,
    SCOPE_RE,
    Count,
    Duration,
    Fraction,
    Seconds,
    Usd,
    Weight,
    _Strict,
    usd_to_micros,
)
from routing_sidecar.settings import (
    SCOPE_LABELS,
    CacheSettings,
    LimitSettings,
    OutcomeLimits,
)


class ModelConfig(_Strict):
    """One catalog entry as written in YAML; prices in USD per million tokens."""

    provider: Annotated[str, Field(min_length=1)]
    tier: Annotated[int, Field(ge=1, le=3)]
    input_per_mtok: Usd
    output_per_mtok: Usd
    context_window: Annotated[int, Field(gt=0, le=MAX_TOKENS)]
    tokens_per_s: Annotated[float, Field(gt=0, le=MAX_COUNT)]
    quality: Fraction
    capabilities: list[str] = []
    origin: Literal["hosted", "local"] = "hosted"
    priced_at: str | None = None
    upstream_model: Annotated[str, Field(min_length=1)] | None = None  # id sent to the provider

class RetryConfig(_Strict):
    """Retry advice handed to callers for one model."""

    max_retries: Annotated[int, Field(ge=0, le=10)] = 2
    base_backoff_s: Annotated[float, Field(ge=0, le=3600)] = 0.2
    max_backoff_s: Annotated[float, Field(ge=0, le=3600)] = 1.0


class PolicyConfig(_Strict):
    """A named policy: models in priority order and per-task limits."""

    models: Annotated[list[str], Field(min_length=1)]
    objective: Literal["cost_speed", "balanced", "quality"] | None = None
    max_cost_per_task_usd: Annotated[float, Field(gt=0, le=MAX_USD)] | None = None
    max_output_tokens: Annotated[int, Field(gt=0, le=MAX_TOKENS)] | None = None
    fallbacks: Annotated[int, Field(ge=0, le=10)] = 2
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    retry: RetryConfig = RetryConfig()
    critical: bool = False
    quality_floor: Fraction | None = None
    # Execute mode: continue a stream cut after tokens on the next model (given the partial
    # answer), and start the first fallback beside a chosen model silent for this long.
    resume_on_stream_failure: bool = False
    hedge_after_ms: Annotated[int, Field(ge=1, le=600_000)] | None = None


class PriorityRange(_Strict):
    """Inclusive priority bounds."""

    min: Annotated[int, Field(ge=0, le=100)] | None = None
    max: Annotated[int, Field(ge=0, le=100)] | None = None


class MatchConfig(_Strict):
    """Task conditions: task_type (exact or glob, one or a list), priority range, labels."""

    task_type: str | list[str] | None = None
    priority: PriorityRange | None = None
    labels: dict[str, str] = {}


class RuleConfig(_Strict):
    """task -> policy; first match wins."""

    match: MatchConfig
    policy: str


class ShapeConfig(_Strict):
    """task shape -> objective, used when neither request nor policy sets one."""

    match: MatchConfig
    objective: Literal["cost_speed", "balanced", "quality"]


class BudgetConfig(_Strict):
    """One budget: a scope, a period and a limit."""

    scope: str
    period: Literal["day", "week", "month", "task"] | None = None
    limit_usd: Annotated[float, Field(gt=0, le=MAX_USD)]
    alert_at: Fraction = 0.8
    on_exceed: Literal["downgrade", "reject"] = "reject"

    @field_validator("scope")
    @classmethod
    def _scope_shape(cls, v: str) -> str:
        if not SCOPE_RE.fullmatch(v):
            raise ValueError(
                f"unknown scope {v!r}; expected global, task, or project:|provider:|model:|"
                "policy:|worker: followed by a name"
            )
        return v


class TierConfig(_Strict):
    """Tier reservation: which tiers are kept back and how tasks claim them."""

    reserve_above: Annotated[int, Field(ge=1, le=3)] = 1
    ev_percentile: Annotated[float, Field(gt=0, lt=100)] = 90.0
    priority_override: Annotated[int, Field(ge=0, le=100)] = 95
    ev_window: Count = 1000
    ev_min_samples: Count = 20


class BreakerConfig(_Strict):
    """When a model's or provider's circuit opens and how long it stays open."""

    consecutive_failures: Count = 5
    error_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    min_volume: Annotated[float, Field(ge=1, le=MAX_COUNT)] = 10.0
    cooldown_s: Annotated[float, Field(gt=0, le=DAY_S)] = 30.0
    max_cooldown_s: Annotated[float, Field(gt=0, le=DAY_S)] = 300.0
    probe_timeout_s: Seconds = 60.0


class DetectionConfig(_Strict):
    """Thresholds of the per-provider and per-lane detection states."""

    elevated_fallback_rate: Annotated[float, Field(gt=0, le=1)] = 0.1
    degraded_error_rate: Annotated[float, Field(gt=0, le=1)] = 0.25
    idle_after_s: Duration = 900.0
    min_volume: Annotated[float, Field(ge=1, le=MAX_COUNT)] = 5.0


class DemotionConfig(_Strict):
    """How much slow or failing models lose in scoring, scaled by how much evidence there is."""

    error_weight: Annotated[float, Field(ge=0, le=100)] = 0.5
    slowness_weight: Annotated[float, Field(ge=0, le=100)] = 0.2
    evidence: Annotated[float, Field(gt=0, le=MAX_COUNT)] = 10.0
    max_penalty: Annotated[float, Field(ge=0, le=1)] = 0.5


class HealthConfig(_Strict):
    """Per-model and per-provider health: EWMAs, decaying windows, breakers, detection."""

    ewma_alpha: Annotated[float, Field(gt=0, le=1)] = 0.2
    window_s: Duration = 300.0
    breaker: BreakerConfig = BreakerConfig()
    detection: DetectionConfig = DetectionConfig()
    demotion: DemotionConfig = DemotionConfig()


class ExplorationConfig(_Strict):
    """Bounded exploration of models not yet proven for a task type."""

    enabled: bool = True
    max_share: Fraction = 0.1
    min_samples_to_prove: Weight = 5.0


class LearningConfig(_Strict):
    """Learned quality per (task type, model): prior, forgetting, confidence, exploration."""

    prior_strength: Weight = 20.0
    pool_strength: Weight = 8.0
    forget: Annotated[float, Field(gt=0, le=1)] = 0.995
    confidence: Annotated[float, Field(ge=0.5, lt=1)] = 0.8
    max_task_types: Count = 4096
    exploration: ExplorationConfig = ExplorationConfig()


class OutcomesConfig(_Strict):
    """How far a reported outcome may go before it is refused (README: outcome checks)."""

    max_attempts: Annotated[int, Field(ge=1, le=64)] = 16
    cost_tolerance: Annotated[float, Field(ge=1, le=100, allow_inf_nan=False)] = 1.5
    cost_slack_usd: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 0.01
    clock_skew_s: Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)] = 300.0

    def limits(self) -> OutcomeLimits:
        """These settings as the core's OutcomeLimits."""
        return OutcomeLimits(self.max_attempts, self.cost_tolerance,
                             usd_to_micros(self.cost_slack_usd), self.clock_skew_s)


class CacheConfig(_Strict):
    """The response cache (README: Response cache).

    `backend: sqlite` keeps entries in the store's file (in `path` when the store is
    PostgreSQL); `backend: redis` shares them between the sidecars of a fleet, on the fleet's
    Redis (`fleet.redis_url`, under `fleet.key_prefix`).
    """

    enabled: bool = True
    backend: Literal["sqlite", "redis"] = "sqlite"
    ttl_s: Annotated[float, Field(gt=0, le=366 * 86_400, allow_inf_nan=False)] = 86_400.0
    max_entries: Annotated[int, Field(ge=1, le=100_000_000)] = 100_000
    max_bytes: Annotated[int, Field(ge=1024, le=1 << 40)] = 256 * 1024 * 1024
    max_value_bytes: Annotated[int, Field(ge=1, le=64 * 1024 * 1024)] = 256 * 1024
    partition_labels: list[str] = ["project"]
    deterministic_only: bool = True
    sweep_interval_s: Annotated[float, Field(ge=0.1, le=3600)] = 10.0  # no spinning sweeper
    # The cache's own SQLite file, used only when the audit trail is in PostgreSQL (store.url).
    path: Annotated[str, Field(min_length=1)] = "var/cache.db"

    @field_validator("partition_labels")
    @classmethod
    def _label_names(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            if not LABEL_KEY_RE.fullmatch(name):
                raise ValueError(f"[{i}]: {name!r} is not a label key")
        if len(set(v)) != len(v):
            raise ValueError("a label is listed twice")
        return v

    def settings(self) -> CacheSettings:
        """These settings as the services' CacheSettings."""
        return CacheSettings(
            self.enabled, self.ttl_s, self.max_entries, self.max_bytes, self.max_value_bytes,
            tuple(self.partition_labels), self.deterministic_only, self.sweep_interval_s,
        )


class LimitsConfig(_Strict):
    """Caps on distinct label values (budget scopes, health lanes, metric series) and scope case.

    A request bringing a value beyond its label's cap is refused (RESOURCE_EXHAUSTED); values
    already known keep working. With casefold_scope_labels, `project` and `worker` values and
    the project:/worker: budget scopes of this file are compared case-folded.
    """

    max_projects: Count = 1000
    max_workers: Count = 1000
    max_lanes: Count = 100
    max_label_values: Count = 1000  # for each key of capped_labels
    capped_labels: list[str] = ["layer"]
    casefold_scope_labels: bool = True

    @field_validator("capped_labels")
    @classmethod
    def _label_keys(cls, v: list[str]) -> list[str]:
        for key in v:
            if not LABEL_KEY_RE.fullmatch(key):
                raise ValueError(f"{key!r} is not a label key (1..64 of A-Z a-z 0-9 _ . : / @ + -)")
        return v

    def settings(self) -> LimitSettings:
        """Label key -> cap (the named caps beat the generic one), and the folding switch."""
        caps = dict.fromkeys(self.capped_labels, self.max_label_values)
        caps.update(project=self.max_projects, worker=self.max_workers, lane=self.max_lanes)
        return LimitSettings(MappingProxyType(caps), self.casefold_scope_labels)

    def scope_name(self, scope: str) -> str:
        """A project:/worker: scope (or pattern) as requests' normalised labels will name it."""
        kind, sep, name = scope.partition(":")
        if sep and kind in SCOPE_LABELS and self.casefold_scope_labels:
            return f"{kind}:{name.lower()}"
        return scope
