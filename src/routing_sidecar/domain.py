"""Frozen domain types shared by every layer; no protobuf, no I/O."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase

from routing_sidecar.quick_init import quick_init

MICROS_PER_USD = 1_000_000
TOKENS_PER_MTOK = 1_000_000


class Objective(StrEnum):
    """How candidates are weighed: cheap and fast, balanced, or best quality."""

    AUTO = "auto"
    COST_SPEED = "cost_speed"
    BALANCED = "balanced"
    QUALITY = "quality"


class DecisionStatus(StrEnum):
    """What a decision amounts to."""

    ROUTED = "ROUTED"
    AWAIT_SLOT = "AWAIT_SLOT"
    REJECTED = "REJECTED"
    CACHE_HIT = "CACHE_HIT"


class ReasonCode(StrEnum):
    """Machine-readable cause of a decision's status."""

    SELECTED = "SELECTED"
    DOWNGRADED = "DOWNGRADED"
    AWAITING_SLOT = "AWAITING_SLOT"
    NO_CAPABLE_MODEL = "NO_CAPABLE_MODEL"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    CACHE_HIT = "CACHE_HIT"
    # No capable model's estimate meets the quality floor: the best estimate runs anyway.
    BELOW_FLOOR = "BELOW_FLOOR"
    # The shared budget ledger cannot be reached and budgets fail closed.
    BUDGET_UNAVAILABLE = "BUDGET_UNAVAILABLE"


class Rejection(StrEnum):
    """Why a candidate was not chosen; CHOSEN marks the one that was."""

    CHOSEN = "chosen"
    FALLBACK = "fallback"
    OUTSCORED = "outscored"
    EXCLUDED = "excluded"
    CAPABILITY = "capability"
    MIN_TIER = "min_tier"
    CONTEXT_WINDOW = "context_window"
    MAX_COST = "max_cost"
    NO_SLOT = "no_slot"
    TIER_RESERVED = "tier_reserved"
    BUDGET = "budget"
    CIRCUIT_OPEN = "circuit_open"
    QUALITY = "quality"
    NO_CREDENTIALS = "no_credentials"  # execute mode: the sidecar cannot call its provider


class AttemptStatus(StrEnum):
    """How one call to a model ended."""

    SUCCESS = "SUCCESS"
    TRANSIENT_ERROR = "TRANSIENT_ERROR"
    PERMANENT_ERROR = "PERMANENT_ERROR"
    TIMEOUT = "TIMEOUT"
    RATE_LIMITED = "RATE_LIMITED"
    CANCELLED = "CANCELLED"  # the caller went away while the call was running


class BudgetPeriod(StrEnum):
    """The window a budget limit applies to."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    TASK = "task"


class BudgetState(StrEnum):
    """Where a scope stands against its limit."""

    OK = "OK"
    ALERT = "ALERT"
    EXCEEDED = "EXCEEDED"


class OnExceed(StrEnum):
    """What a budget does when a task would exceed it."""

    DOWNGRADE = "downgrade"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """One configured budget; a '*' in the name applies it to each matching name separately."""

    scope: str
    period: BudgetPeriod
    limit_micros: int
    alert_at: float = 0.8
    on_exceed: OnExceed = OnExceed.REJECT

    def matches(self, key: str) -> bool:
        """True when this rule's scope pattern covers the concrete scope key."""
        if ":" not in self.scope or ":" not in key:
            return self.scope == key
        kind, _, name = self.scope.partition(":")
        key_kind, _, key_name = key.partition(":")
        return kind == key_kind and fnmatchcase(key_name, name)

    @property
    def alert_micros(self) -> int:
        """Usage at which the scope enters ALERT."""
        return math.ceil(self.alert_at * self.limit_micros)

    def state(self, used_micros: int) -> BudgetState:
        """EXCEEDED once no headroom is left, ALERT from the alert threshold, else OK."""
        if used_micros >= self.limit_micros:
            return BudgetState.EXCEEDED
        return BudgetState.ALERT if used_micros >= self.alert_micros else BudgetState.OK

    def thresholds(self) -> tuple[tuple[BudgetState, int], ...]:
        """The usage marks whose crossing raises an alert."""
        return (BudgetState.ALERT, self.alert_micros), (BudgetState.EXCEEDED, self.limit_micros)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One catalog entry; prices are integer micro-USD per million tokens."""

    name: str
    provider: str
    tier: int
    input_micros_per_mtok: int
    output_micros_per_mtok: int
    context_window: int
    tokens_per_s: float
    quality: float
    capabilities: frozenset[str] = frozenset()
    origin: str = "hosted"

    def cost_micros(self, input_tokens: int, output_tokens: int) -> int:
        """Cost of a call in micro-USD, rounded up so estimates never undershoot."""
        raw = (
            input_tokens * self.input_micros_per_mtok
            + output_tokens * self.output_micros_per_mtok
        )
        return -(-raw // TOKENS_PER_MTOK)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a caller should retry one model before falling back."""

    max_retries: int = 2
    base_backoff_s: float = 0.2
    max_backoff_s: float = 1.0


@dataclass(frozen=True, slots=True)
class Policy:
    """A named set of models in priority order with per-task limits."""

    name: str
    models: tuple[str, ...]
    objective: Objective | None = None
    max_cost_per_task_micros: int | None = None
    max_output_tokens: int | None = None
    fallbacks: int = 2
    temperature: float | None = None
    retry: RetryPolicy = RetryPolicy()
    critical: bool = False
    quality_floor: float | None = None
    # Execute mode: a stream cut after tokens were sent continues on the next model, given
    # the partial answer; and a second model is started when the first is slow to answer.
    resume_on_stream_failure: bool = False
    hedge_after_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Match:
    """Conditions a task must meet; every given condition must hold."""

    task_types: tuple[str, ...] = ()
    priority_min: int | None = None
    priority_max: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rule:
    """Maps matching tasks to a policy; first match wins."""

    match: Match
    policy: str


@dataclass(frozen=True, slots=True)
class ShapeRule:
    """Maps matching tasks to an objective when neither request nor policy sets one."""

    match: Match
    objective: Objective


@dataclass(frozen=True, slots=True)
class TierRules:
    """Which tiers are reserved and how a task may claim them."""

    reserve_above: int = 1
    ev_percentile: float = 90.0
    priority_override: int = 95
    ev_window: int = 1000
    ev_min_samples: int = 20


@quick_init
@dataclass(frozen=True, slots=True)
class Requirements:
    """What every chosen model must offer."""

    min_tier: int = 0
    capabilities: frozenset[str] = frozenset()
    min_quality: float | None = None


@dataclass(frozen=True, slots=True)
class Slot:
    """A worker slot offered for a task, bound to one model."""

    slot_id: str
    model: str
    utilisation: float = 0.0


@quick_init
@dataclass(frozen=True, slots=True)
class Task:
    """A routing request's metadata; never the prompt."""

    task_id: str
    task_type: str
    priority: int = 50
    requires: Requirements = Requirements()
    estimated_input_tokens: int = 0
    max_output_tokens: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    ev: float | None = None
    objective: Objective = Objective.AUTO
    policy: str | None = None
    available_slots: tuple[Slot, ...] = ()
    exclude_models: frozenset[str] = frozenset()
    cache_key: str | None = None
    dry_run: bool = False
    # What a good result is worth to the caller: routing then maximises expected net value.
    value_micros: int | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class Alternative:
    """One candidate considered by a decision, with its fate."""

    model: str
    provider: str
    tier: int
    score: float
    estimated_cost_micros: int
    rejection: Rejection
    reason: str
    estimated_quality: float
    slot_id: str | None = None
    # value x estimated quality - estimated cost, when the task carried a value.
    net_value_micros: int | None = None

    @property
    def chosen(self) -> bool:
        """True for the candidate the decision picked."""
        return self.rejection is Rejection.CHOSEN


@quick_init
@dataclass(frozen=True, slots=True)
class Fallback:
    """One step of the chain to try when the chosen model fails."""

    model: str
    provider: str
    tier: int
    estimated_cost_micros: int
    slot_id: str | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A budget scope's standing in its current period."""

    scope: str
    period: BudgetPeriod
    limit_micros: int
    spent_micros: int
    reserved_micros: int
    state: BudgetState
    period_start: float | None = None
    period_end: float | None = None

    @property
    def remaining_micros(self) -> int:
        """Headroom left; never negative."""
        return max(0, self.limit_micros - self.spent_micros - self.reserved_micros)


@quick_init
@dataclass(frozen=True, slots=True)
class Selection:
    """The pure outcome of the selection core, before ids, time and budgets are attached."""

    status: DecisionStatus
    reason_code: ReasonCode
    policy: str
    objective: Objective
    reason: str
    alternatives: tuple[Alternative, ...]
    chosen: Alternative | None = None
    fallbacks: tuple[Fallback, ...] = ()
    # The chosen model was admitted by exploration (an unproven model tried on purpose).
    explored: bool = False

    @property
    def estimated_cost_micros(self) -> int:
        """Estimated cost of the chosen model, 0 when nothing was chosen."""
        return self.chosen.estimated_cost_micros if self.chosen else 0


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One stored answer of the response cache, and what producing it cost.

    Decision mode: `value` is the orchestrator's opaque result. Execute mode: `value` is the
    answer's text (UTF-8) and `chunks` the length, in characters, of each text delta it
    streamed in, so that a hit replays it in the same pieces.
    """

    key: str  # the digest (core/cache_key.py)
    namespace: str
    project: str
    policy: str
    value: bytes
    source_decision_id: str  # the decision whose answer this is
    model: str
    provider: str
    cost_micros: int  # what the answer cost: what each hit saves
    created_at: float
    expires_at: float
    chunks: tuple[int, ...] = ()
    finish_reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def size_bytes(self) -> int:
        """What the entry weighs against `cache.max_bytes`."""
        return len(self.value) + len(self.key) + 8 * len(self.chunks)


@quick_init
@dataclass(frozen=True, slots=True)
class Decision:
    """A routing decision as answered to the caller and written to the audit log."""

    decision_id: str
    task_id: str
    decided_at: float
    selection: Selection
    dry_run: bool = False
    budgets: tuple[BudgetStatus, ...] = ()
    # CACHE_HIT: the stored answer, and (in it) the decision that produced it.
    cached: CacheEntry | None = None
    # The request was looked up in the response cache (a hit, or a miss decided as usual).
    cache_lookup: bool = False

    @property
    def status(self) -> DecisionStatus:
        """The decision's status."""
        return self.selection.status


@quick_init
@dataclass(frozen=True, slots=True)
class Attempt:
    """One call the orchestrator made for a decision."""

    model: str
    provider: str
    status: AttemptStatus
    error_type: str = ""
    started_at: float | None = None
    duration_s: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int | None = None
    retry_after_s: float | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to a decision: its attempts, success and graded quality."""

    decision_id: str
    attempts: tuple[Attempt, ...] = ()
    success: bool = False
    quality: float | None = None
    # Decision mode: the result to store in the response cache under the decision's key.
    cache_value: bytes = b""
