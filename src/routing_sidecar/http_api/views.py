"""The JSON documents of the read API under /api/routing/ (and of the admin answers).

Pydantic models, so that what is served and what /openapi.json says of it are one
definition. Names are snake_case, money is integer micro-USD (`*_micros`), times are RFC 3339
in UTC. The bodies of /route and /outcome are the contract's messages instead (jsonwire).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from routing_sidecar.config import PolicyConfig, RuleConfig


class View(BaseModel):
    """Base of every document: immutable, no stray keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def at(epoch_s: float) -> datetime:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(epoch_s, UTC)


def at_or_none(epoch_s: float | None) -> datetime | None:
    """Epoch seconds as an aware UTC datetime; None stays None."""
    return None if epoch_s is None else at(epoch_s)


class ErrorDetail(View):
    """What went wrong, in the gRPC status vocabulary."""

    code: str = Field(description="INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, ...")
    message: str = Field(description="starts with the field's path for bad input")
    field: str | None = None
    problems: list[str] = Field(default_factory=list,
                                description="every problem found, for a refused policy")
    retryable: bool = False


class ErrorBody(View):
    """Every answer that is not 2xx."""

    error: ErrorDetail


class Health(View):
    """GET /health."""

    status: Literal["SERVING", "NOT_SERVING"]


# -- costs ----------------------------------------------------------------------------------


class Budget(View):
    """One budget scope in its current period."""

    scope: str
    period: Literal["day", "week", "month", "task"]
    limit_micros: int
    spent_micros: int
    reserved_micros: int
    remaining_micros: int
    utilisation: float = Field(description="(spent + reserved) / limit")
    state: Literal["OK", "ALERT", "EXCEEDED"]
    period_start: datetime | None = None
    period_end: datetime | None = None


class CacheStats(View):
    """The response cache's figures over the last 24 hours (off and zero when it is off)."""

    enabled: bool = False
    hits: int = 0
    misses: int = 0
    hit_rate: float = 0.0
    saved_micros: int = 0
    note: str = "the response cache is turned off (cache.enabled)"


class Costs(View):
    """GET /api/routing/costs: budgets (spend and reservations by scope and period), cache."""

    generated_at: datetime
    budgets: list[Budget]
    cache: CacheStats = CacheStats()


# -- matrix -----------------------------------------------------------------------------------


class Cell(View):
    """Routed decisions of one model for one value of the dimension."""

    model: str
    value: str
    decisions: int
    estimated_cost_micros_per_decision: int
    actual_cost_micros_per_decision: int
    fallback_decisions: int
    fallback_rate: float


class ProviderRow(View):
    """One provider's economics over the window."""

    provider: str
    decisions: int
    fallback_rate: float
    error_rate: float
    input_tokens: int
    output_tokens: int
    spend_micros: int
    blended_cost_micros_per_mtok: int
    detection_state: str = Field(description="healthy, elevated_fallback, degraded or idle")


class Matrix(View):
    """GET /api/routing/matrix: model x task type (or x label value), and provider totals."""

    window_start: datetime
    window_end: datetime
    hours: int
    by: str = Field(description="task_type, or the label key the values belong to")
    models: list[str]
    values: list[str]
    cells: list[Cell]
    providers: list[ProviderRow]
    label_keys: list[str] = Field(description="label keys seen in the window, for `by`")


# -- performance ----------------------------------------------------------------------------


class HealthRow(View):
    """Live health of one model, provider or lane over the decaying window."""

    scope: Literal["model", "provider", "lane"]
    name: str
    volume: float
    success_rate: float
    transient_rate: float
    permanent_rate: float
    timeout_rate: float
    rate_limited_rate: float
    fallback_rate: float
    latency_ewma_s: float | None
    tokens_per_s: float | None
    breaker: Literal["closed", "open", "half_open"]
    open_until: datetime | None
    detection_state: str | None
    last_seen: datetime | None


class Learned(View):
    """Learned quality of one model on one task type."""

    task_type: str
    model: str
    mean: float
    lower_bound: float
    samples: float


class ModelState(View):
    """A catalog model's breaker and pause."""

    name: str
    provider: str
    tier: int
    breaker: Literal["closed", "open", "half_open"]
    open_until: datetime | None = None
    paused: bool = False
    paused_at: datetime | None = None
    pause_reason: str = ""


class ProviderState(View):
    """A catalog provider's breaker and detection state."""

    name: str
    breaker: Literal["closed", "open", "half_open"]
    open_until: datetime | None = None
    detection_state: str


class Performance(View):
    """GET /api/routing/performance: health rows, detection states, learned quality."""

    generated_at: datetime
    models: list[ModelState]
    providers: list[ProviderState]
    detection: dict[str, str] = Field(description="'provider:X' or 'lane:X' -> state")
    health: list[HealthRow]
    learned: list[Learned]


# -- decisions ------------------------------------------------------------------------------


class Alternative(View):
    """A candidate the decision considered, and why it was (not) chosen."""

    model: str
    provider: str
    tier: int
    score: float
    estimated_cost_micros: int
    rejection: str
    reason: str
    estimated_quality: float
    slot_id: str | None = None
    chosen: bool


class Fallback(View):
    """One step of the decision's fallback chain."""

    model: str
    provider: str
    tier: int
    estimated_cost_micros: int
    slot_id: str | None = None


class Attempt(View):
    """One reported attempt."""

    index: int
    model: str
    provider: str
    status: str
    error_type: str
    started_at: datetime | None
    duration_s: float
    input_tokens: int
    output_tokens: int
    estimated_cost_micros: int
    actual_cost_micros: int


class OutcomeView(View):
    """How the decision ended, once reported."""

    success: bool
    quality: float | None
    actual_cost_micros: int
    reported_at: datetime


class DecisionItem(View):
    """One audited decision with its why, its alternatives and what happened."""

    decision_id: str
    task_id: str
    task_type: str
    status: str
    reason_code: str
    model: str | None
    provider: str | None
    slot_id: str | None
    tier: int | None
    policy: str
    objective: str
    estimated_cost_micros: int
    reason: str
    labels: dict[str, str]
    dry_run: bool
    decided_at: datetime
    config_hash: str
    trace_id: str
    alternatives: list[Alternative]
    fallbacks: list[Fallback]
    outcome: OutcomeView | None
    attempts: list[Attempt]


class Decisions(View):
    """GET /api/routing/decisions: the most recent decisions, newest first."""

    decisions: list[DecisionItem]


# -- activity -------------------------------------------------------------------------------


class Point(View):
    """One bucket of a time series."""

    start: datetime
    decisions: int
    estimated_cost_micros: int
    spend_micros: int


class Activity(View):
    """GET /api/routing/activity: decisions per minute (last hour), spend per hour (last day)."""

    decisions_per_minute: list[Point]
    spend_per_hour: list[Point]


# -- policies and operator actions ----------------------------------------------------------


class PolicyView(View):
    """A policy as it routes now, and where it comes from."""

    name: str
    source: Literal["file", "api"]
    in_file: bool
    version: int | None = Field(None, description="the edit that set it, for source api")
    changed_at: datetime | None = None
    config: PolicyConfig


class PolicyChangeView(View):
    """One policy edit made through the API."""

    version: int
    policy: str
    action: Literal["set", "revert"]
    config_hash: str
    changed_at: datetime


class Policies(View):
    """GET /api/routing/policies: every policy, the rules choosing them, recent edits."""

    config_hash: str
    default_policy: str
    policies: list[PolicyView]
    rules: list[RuleConfig]
    changes: list[PolicyChangeView]


class PolicyUpdate(View):
    """POST /api/routing/policies: one policy, validated exactly as in the config file."""

    name: str = Field(description="the policy to create or replace")
    policy: PolicyConfig


class PolicyApplied(View):
    """What a policy edit produced."""

    name: str
    version: int
    action: Literal["set", "revert"]
    config_hash: str
    policy: PolicyConfig | None = Field(description="the policy now routing; None once gone")


class PauseState(View):
    """A model's pause after POST .../pause or .../resume."""

    model: str
    paused: bool
    paused_at: datetime | None = None
    reason: str = ""


class PauseRequest(View):
    """The optional body of POST /api/routing/models/{name}/pause."""

    reason: str = Field("", max_length=200)


class BreakerState(View):
    """A breaker after POST /api/routing/breakers/{scope}/{name}/reset."""

    scope: Literal["model", "provider"]
    name: str
    breaker: Literal["closed", "open", "half_open"]
    reset: bool = Field(description="false when the breaker had never seen traffic")


def dump(view: BaseModel) -> dict[str, Any]:
    """A document as JSON-ready data."""
    return view.model_dump(mode="json")
