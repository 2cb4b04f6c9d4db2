"""Protocols for the swappable back ends the service depends on, and the records they carry."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Collection, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, Protocol

from routing_sidecar import domain
from routing_sidecar.calls import ProviderCall, StreamEvent
from routing_sidecar.core.budget_rules import LedgerChange, LedgerEntry
from routing_sidecar.core.health_types import BreakerChange
from routing_sidecar.core.learning import QualityRow
from routing_sidecar.core.view import BudgetLine
from routing_sidecar.records import (
    AttemptRecord,
    DecisionRecord,
    GradeRecord,
    LedgerTotal,
    OutcomeRecord,
    PerformanceRecord,
    RoutingStats,
)

# True in the context of a caller whose commits come in bursts (a RouteStream's decisions,
# committed from tasks started together): a store's writer then lets each job wait for its
# next batch, so that the burst shares transactions, instead of committing a lone job at once.
COMMITS_IN_BURSTS: ContextVar[bool] = ContextVar("commits_in_bursts", default=False)


class Clock(Protocol):
    """Wall-clock and monotonic time, injected so tests and the core stay deterministic."""

    def now(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds, for measuring durations."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """Seconds since the epoch (UTC)."""
        return time.time()

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()



class BudgetBook(Protocol):
    """The budget ledger as the services use it: embedded in the process, or shared (Redis).

    Reads on the decision path are synchronous, from what the book holds locally; every change
    is awaited. A shared book that cannot reach its store says so with `unavailable`.
    """

    @property
    def unavailable(self) -> str | None:
        """Why the budgets cannot be checked right now, or None when they can."""
        ...

    def lines(self, labels: Mapping[str, str], model: domain.ModelSpec, policy: str,
              task_id: str, now: float) -> tuple[BudgetLine, ...]:
        """Every budget a decision for the model falls under, with what it used."""
        ...

    def statuses_for(self, labels: Mapping[str, str], model: domain.ModelSpec, policy: str,
                     task_id: str, now: float) -> list[domain.BudgetStatus]:
        """Standing of every budget one decision falls under."""
        ...

    def cached_status(self, now: float,
                      scopes: Collection[str] = ()) -> list[domain.BudgetStatus]:
        """Every scope's standing as held locally (gauges read this)."""
        ...

    async def status(self, now: float,
                     scopes: Collection[str] = ()) -> list[domain.BudgetStatus]:
        """Every scope's standing, read fresh from where the totals live."""
        ...

    async def reserve(self, reservation_id: str, labels: Mapping[str, str],
                      model: domain.ModelSpec, policy: str, task_id: str, amount_micros: int,
                      now: float, expires_at: float) -> tuple[BudgetLine | None, LedgerChange]:
        """Hold the amount on every budget, if it fits; else the first budget it breaks."""
        ...

    async def settle(self, reservation_id: str, labels: Mapping[str, str], policy: str,
                     task_id: str, charges: Sequence[tuple[domain.ModelSpec, int]], at: float,
                     now: float) -> LedgerChange:
        """Close the reservation and charge each attempt to its own budgets."""
        ...

    async def release(self, reservation_id: str, now: float) -> LedgerChange:
        """Drop an open reservation without charging it."""
        ...

    async def expire(self, now: float) -> LedgerChange:
        """Release reservations past their expiry."""
        ...

    async def revert(self, change: LedgerChange) -> None:
        """Undo a change whose rows failed to commit (or that was a duplicate)."""
        ...

    def replace_rules(self, rules: Sequence[domain.BudgetRule]) -> None:
        """Swap in reloaded rules, keeping every total and reservation."""
        ...


@dataclass(frozen=True, slots=True)
class PendingSettle:
    """A settle the shared ledger has not seen yet: what ReportOutcome would have charged."""

    reservation_id: str
    labels: dict[str, str]
    policy: str
    task_id: str
    charges: tuple[tuple[str, int], ...]  # (model name, micro-USD) per attempt
    at: float  # when the decision was made: its charges land in that moment's periods
    now: float


@dataclass(frozen=True, slots=True)
class QualityObservation:
    """One outcome's evidence about a model on a task type: y in 0..1, success, graded."""

    task_type: str
    model: str
    y: float
    success: bool
    graded: bool


class SharedHealth(Protocol):
    """Breaker changes shared by the fleet (storage.redis.health.SharedBreakers)."""

    async def start(self, apply: Callable[[BreakerChange], None]) -> None:
        """Apply the fleet's open breakers now, and every change other sidecars make."""
        ...

    async def publish(self, changes: Iterable[BreakerChange]) -> None:
        """Tell the fleet about this sidecar's breaker changes."""
        ...

    async def stop(self) -> None:
        """Stop listening."""
        ...


class SharedQuality(Protocol):
    """Learned-quality evidence summed over the fleet (storage.redis.learning.SharedLearning)."""

    async def push(self, observations: Sequence[QualityObservation]) -> None:
        """Fold observations into the fleet's sums, in order."""
        ...

    async def pull(self, task_types: Iterable[str], models: Iterable[str]
                   ) -> tuple[list[QualityRow], list[QualityRow]]:
        """The fleet's evidence per (task type, model) asked, and each model's pool."""
        ...


class PendingQueue(Protocol):
    """Durable pending settles, in order (storage.outbox.Outbox)."""

    async def add(self, op: PendingSettle) -> int:
        """Queue one settle; returns once it is committed."""
        ...

    async def pending(self, limit: int = 500) -> list[tuple[int, PendingSettle]]:
        """The oldest queued settles, in the order they were queued."""
        ...

    async def done(self, row_id: int) -> None:
        """Forget a settle the shared ledger has applied."""
        ...

    async def size(self) -> int:
        """How many settles are waiting."""
        ...


class LedgerStore(Protocol):
    """Durable budget ledger rows; the in-memory Ledger is rebuilt from them at start."""

    async def load_ledger_entries(self) -> list[LedgerEntry]:
        """Every persisted row, in the order written."""
        ...

    async def record_ledger(self, rows: Sequence[LedgerEntry]) -> None:
        """Persist rows (expiry, release); return once committed."""
        ...

    async def ledger_totals(self) -> list[LedgerTotal]:
        """Sums of persisted rows per scope, period, period start and kind."""
        ...


class AuditLog(Protocol):
    """Durable decisions, attempts, outcomes and config versions."""

    async def record_decision(self, row: DecisionRecord,
                              ledger_rows: Sequence[LedgerEntry]) -> None:
        """Persist a decision with its reservation rows; return once committed."""
        ...

    async def get_decision(self, decision_id: str) -> DecisionRecord | None:
        """A recorded decision, or None."""
        ...

    async def record_outcome(self, decision_id: str, attempts: Sequence[AttemptRecord],
                             outcome: OutcomeRecord, ledger_rows: Sequence[LedgerEntry],
                             performance: Sequence[PerformanceRecord] = ()) -> bool:
        """Persist an outcome once; False (nothing written) when one is already recorded."""
        ...

    async def get_outcome(self, decision_id: str) -> OutcomeRecord | None:
        """The outcome recorded for a decision, or None."""
        ...

    async def get_attempts(self, decision_id: str) -> list[AttemptRecord]:
        """The attempts recorded for a decision, in attempt order."""
        ...

    async def record_grade(self, grade: GradeRecord,
                           performance: Sequence[PerformanceRecord] = ()) -> bool:
        """Persist a grade once; False (nothing written) when the decision is graded already."""
        ...

    async def save_learned(self, book: str, state_json: str, at: float) -> None:
        """Replace the snapshot of one learned book."""
        ...

    async def load_learned(self, book: str) -> str | None:
        """The last snapshot of a learned book, or None."""
        ...

    async def record_config(self, config_hash: str, config_json: str, loaded_at: float) -> None:
        """Remember a config version (first load time wins)."""
        ...

    async def routing_stats(self, since: float, label_keys: Sequence[str] = ()) -> RoutingStats:
        """The routing matrix over decisions since a time."""
        ...

    async def prune(self, older_than: float | None = None) -> int:
        """Delete decisions older than a time (default: retention); return how many."""
        ...


@dataclass(frozen=True, slots=True)
class PendingStore:
    """A decision-mode miss waiting for its outcome's `cache_value`: where to store it."""

    decision_id: str
    key: str
    namespace: str
    project: str
    policy: str
    expires_at: float  # after this the outcome no longer stores (swept like an entry)


@dataclass(frozen=True, slots=True)
class CacheUsage:
    """Lookups in one hour for one (namespace, policy, project), added to what is there."""

    window_start: float
    namespace: str
    policy: str
    project: str
    hits: int = 0
    misses: int = 0
    stores: int = 0
    saved_micros: int = 0


@dataclass(frozen=True, slots=True)
class CacheFootprint:
    """How many entries a cache (or part of it) holds and what they weigh."""

    entries: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one sweep removed: expired entries, LRU evictions, expired pending stores."""

    expired: int = 0
    evicted: int = 0
    pending: int = 0


class Cache(Protocol):
    """The response cache's entries, pending decision-mode stores and hourly usage.

    `get` is a read that never waits on a write; last-use times arrive later through `touch`
    (batched), and expiry and the `max_entries` / `max_bytes` bounds are enforced by `sweep`,
    in the background. `put` returns once the entry is durable. `namespace` / `project`
    filters of None mean any.
    """

    async def get(self, key: str, now: float) -> domain.CacheEntry | None:
        """The live entry under a key, or None (absent or expired)."""
        ...

    async def put(self, entry: domain.CacheEntry) -> None:
        """Store (or replace) an entry; return once durable."""
        ...

    async def touch(self, used: Mapping[str, float]) -> None:
        """Record when entries were last used (key -> time), for least-recently-used eviction."""
        ...

    async def put_pending(self, pending: PendingStore) -> None:
        """Remember where a decision's outcome will store its value."""
        ...

    async def get_pending(self, decision_id: str, now: float) -> PendingStore | None:
        """The live pending store of a decision, or None."""
        ...

    async def add_usage(self, rows: Sequence[CacheUsage]) -> None:
        """Add hourly lookup counts to what is recorded."""
        ...

    async def usage(self, since: float, namespace: str | None = None,
                    project: str | None = None) -> list[CacheUsage]:
        """Recorded counts per (namespace, policy, project) over hours from `since` on."""
        ...

    async def footprint(self, namespace: str | None = None,
                        project: str | None = None) -> CacheFootprint:
        """Entries and bytes held (expired entries not yet swept included)."""
        ...

    async def purge(self, namespace: str | None = None, project: str | None = None) -> int:
        """Delete the matching entries; return how many."""
        ...

    async def sweep(self, now: float, max_entries: int, max_bytes: int) -> SweepResult:
        """Drop expired entries and pending stores, then least-recently-used ones over bounds."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent."""
        ...


class ProviderClient(Protocol):
    """One LLM provider (providers/): its credentials, a streamed call, and its connection pool.

    `stream(call)` is an async generator of `TextDelta` events closed by exactly one
    `StreamEnd`; the first event's arrival is the attempt's first token. A failure raises
    `errors.ProviderError` (classified, carrying the usage consumed so far). Closing the
    generator early (`aclose()`, or cancelling the task iterating it) cancels the upstream
    request at once and closes its connection. Timeouts (connect, first token, total) are the
    provider's, enforced inside `stream`.
    """

    @property
    def name(self) -> str:
        """The provider's name in the config (`models.<m>.provider`)."""
        ...

    def has_credentials(self) -> bool:
        """False when the provider needs a key and none could be read (skipped in execute mode)."""
        ...

    def stream(self, call: ProviderCall) -> AsyncGenerator[StreamEvent, None]:
        """Make the call; yield text deltas, then one StreamEnd."""
        ...

    async def aclose(self) -> None:
        """Close the connection pool; the client is unusable afterwards."""
        ...


# -- the admin HTTP API: audit reads for the dashboard, operator state ---------------------


@dataclass(frozen=True, slots=True)
class AuditedDecision:
    """A recorded decision with its outcome (None until reported) and its attempts."""

    decision: DecisionRecord
    outcome: OutcomeRecord | None = None
    attempts: tuple[AttemptRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class FallbackCell:
    """Routed decisions of one model for one dimension value that fell back (> 1 attempt)."""

    model: str
    value: str
    fallback_decisions: int


@dataclass(frozen=True, slots=True)
class ActivityBucket:
    """Non-dry-run decisions made, and spend reported, in one time bucket."""

    start: float
    decisions: int = 0
    estimated_cost_micros: int = 0
    spend_micros: int = 0


PolicyAction = Literal["set", "revert"]


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """One edit of a policy through the HTTP API, a row of `routing_policy_changes`."""

    policy: str
    action: PolicyAction  # set: policy_json replaces the file's; revert: back to the file
    policy_json: str  # the policy as set ("" for a revert)
    config_hash: str  # the config version it produced, a row of `routing_policies`
    changed_at: float
    version: int = 0  # assigned by the store, increasing


@dataclass(frozen=True, slots=True)
class PauseRecord:
    """A model an operator took out of routing, a row of `model_pauses`."""

    model: str
    paused_at: float
    reason: str = ""


class AdminStore(Protocol):
    """What the admin API reads from the audit trail, and the operator state it keeps."""

    async def list_decisions(self, limit: int, model: str | None = None,
                             task_type: str | None = None) -> list[AuditedDecision]:
        """The most recent decisions, newest first, with outcomes and attempts."""
        ...

    async def decision_view(self, decision_id: str) -> AuditedDecision | None:
        """One decision with its outcome and attempts, or None."""
        ...

    async def fallback_cells(self, since: float, label_key: str | None) -> list[FallbackCell]:
        """Fallback decisions per (model, task type), or per (model, label value)."""
        ...

    async def label_keys(self, since: float) -> list[str]:
        """Label keys of the decisions made since a time, sorted."""
        ...

    async def activity(self, since: float, bucket_s: float) -> list[ActivityBucket]:
        """Decisions and spend per bucket since a time (buckets with neither are absent)."""
        ...

    async def record_policy_change(self, change: PolicyChange, config_json: str) -> int:
        """Persist a policy edit with the config version it produced; return its version."""
        ...

    async def policy_changes(self) -> list[PolicyChange]:
        """Every policy edit, oldest first."""
        ...

    async def set_pause(self, pause: PauseRecord) -> None:
        """Persist a model's pause (replacing an earlier one)."""
        ...

    async def clear_pause(self, model: str) -> None:
        """Forget a model's pause."""
        ...

    async def load_pauses(self) -> list[PauseRecord]:
        """Every paused model."""
        ...
