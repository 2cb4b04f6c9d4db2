"""Route: snapshot the view, decide, reserve budget, audit, then answer.

`RoutingService` owns the clock, the ids, the view and the reservation; the decision itself is
`core.decide`. Everything derived from the config is one `RoutingState`, swapped whole on
reload, so no decision ever sees half of two configs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from routing_sidecar import domain
from routing_sidecar.core.budget_rules import NO_CHANGE, LedgerChange
from routing_sidecar.core.catalog import Catalog
from routing_sidecar.core.decide import decide
from routing_sidecar.core.rules import resolve_policy
from routing_sidecar.errors import BudgetUnavailable, InvalidArgument, StorageError, Unavailable
from routing_sidecar.ports import AuditLog, BudgetBook, Clock
from routing_sidecar.quick_init import quick_init
from routing_sidecar.records import DecisionRecord
from routing_sidecar.service.budgets import AlertHook, log_alerts
from routing_sidecar.service.cache import CacheService, cached_selection, project_of
from routing_sidecar.service.ev import EvWindow
from routing_sidecar.service.learning import Learner
from routing_sidecar.service.limits import LabelLimits
from routing_sidecar.service.view import Uncallable, build_view
from routing_sidecar.settings import RouterSettings


def new_decision_id() -> str:
    """An unguessable decision id (80 random bits) that sorts in the order ids were made.

    32 hex digits, as before: the milliseconds since the epoch, then the random part
    (the layout of a UUIDv7). Ids made one after another land at the end of every index
    keyed by them (the audit table's primary key, outcomes, grades) instead of at random
    places in it, so a commit touches the same few pages and those pages fill up.
    """
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def check_task(task: domain.Task, catalog: Catalog) -> None:
    """Reject references the catalog does not know, naming the field."""
    for i, slot in enumerate(task.available_slots):
        if slot.model not in catalog.models:
            raise InvalidArgument(f"available_slots[{i}].model", f"unknown model {slot.model!r}")


@dataclass(frozen=True, slots=True)
class TraceIds:
    """W3C trace and span ids (hex) of the span a decision was made in; empty when untraced."""

    trace_id: str = ""
    span_id: str = ""


NO_TRACE = TraceIds()
# A shared ledger may refuse a reservation the local copy allowed (other sidecars spent in the
# meantime); the task is decided again on the fresh totals, at most this many times in all.
RESERVE_ROUNDS = 3
_NONE_PAUSED: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RoutingState:
    """Everything derived from one config that a decision reads; replaced whole on reload."""

    settings: RouterSettings
    catalog: Catalog
    config_hash: str = ""
    # Models an operator took out of routing, with why.
    paused: Mapping[str, str] = field(default_factory=lambda: _NONE_PAUSED)

    @classmethod
    def of(cls, settings: RouterSettings, config_hash: str = "") -> RoutingState:
        """The state of a settings object: its catalog built once."""
        return cls(settings, Catalog.from_settings(settings), config_hash)


@quick_init
@dataclass(frozen=True, slots=True)
class Decided:
    """One decision made and reserved in memory, waiting for its audit row to commit."""

    decision: domain.Decision
    record: DecisionRecord
    change: LedgerChange


@quick_init
@dataclass(frozen=True, slots=True)
class Routed:
    """A decision made by `RoutingService.begin`, left for `finish` to commit."""

    decided: Decided
    remember: Callable[[], Awaitable[None]] | None = None  # a cache miss's key, kept beside


class RoutingService:
    """Decides tasks, holds their budget, and audits every decision before answering."""

    def __init__(
        self,
        state: RoutingState,
        clock: Clock,
        ledger: BudgetBook,
        audit: AuditLog,
        learner: Learner,
        *,
        new_id: Callable[[], str] = new_decision_id,
        rng: random.Random | None = None,
        limits: LabelLimits | None = None,
    ) -> None:
        self.limits = limits or LabelLimits()  # label normalisation and cardinality caps
        self.state = state
        self.ledger = ledger
        self.learner = learner
        self.alert_hook: AlertHook | None = None  # set by the app to count crossings
        self._audit = audit
        self._clock = clock
        self._new_id = new_id
        self._rng = rng or random.Random()  # exploration draws; the core takes randomness here
        self.ev_window = EvWindow.of(state.settings.tiers)
        self.cache: CacheService | None = None  # set by the app: the response cache

    @property
    def catalog(self) -> Catalog:
        """The catalog decisions are made against now."""
        return self.state.catalog

    def apply(self, state: RoutingState) -> None:
        """Swap in a reloaded config's state everywhere it is derived (no await: atomic).

        The catalog, priors, health and learning settings, critical lanes, tiers and the EV
        window change; the ledger keeps its entries under the new rules, and the books keep
        what they learned.
        """
        self.ev_window = self.ev_window.resized(state.settings.tiers)
        self.ledger.replace_rules(state.settings.budgets)
        self.learner.reconfigure(state.settings)
        # Operator pauses are not config: a reload keeps them.
        self.state = dataclasses.replace(state, paused=self.state.paused)

    def set_paused(self, paused: Mapping[str, str]) -> None:
        """Swap in the models an operator took out of routing, with why (no await: atomic)."""
        self.state = dataclasses.replace(self.state, paused=MappingProxyType(dict(paused)))

    async def decide(self, task: domain.Task, trace: TraceIds = NO_TRACE,
                     uncallable: Uncallable | None = None, *, admitted: bool = False) -> Decided:
        """Decide and reserve; the audit row is left for `commit`.

        The view and the reservation are one step with nothing in between for the embedded
        ledger. A shared ledger checks again atomically as it reserves: when other sidecars
        spent what this one's copy did not show, the reservation is refused and the task is
        decided again on the fresh totals it returned. `uncallable` (execute mode) takes out
        the models the sidecar cannot call itself. `admitted` says the task has already been
        through `limits.admit` (as `begin` does before a cache lookup).
        """
        state = self.state
        if not admitted:
            task = self.limits.admit(task, state.settings.limits)  # scope labels folded, capped
        check_task(task, state.catalog)
        decision_id = self._new_id()
        for round_ in range(1, RESERVE_ROUNDS + 1):
            now = self._clock.now()
            selection, policy = self._select(task, state, now, uncallable)
            chosen = selection.chosen
            model = state.catalog.models[chosen.model] if chosen is not None else None
            if model is None or chosen is None or task.dry_run:
                break
            ttl = state.settings.ledger.reservation_ttl_s
            try:
                block, change = await self.ledger.reserve(
                    decision_id, task.labels, model, policy, task.task_id,
                    chosen.estimated_cost_micros, now, now + ttl)
            except BudgetUnavailable:
                continue  # decided again, the view now says why budgets cannot be checked
            if block is None:
                log_alerts(change.alerts, self.alert_hook)
                return self._decided(task, trace, decision_id, selection, model, policy,
                                     change, now)
            if round_ == RESERVE_ROUNDS:
                raise Unavailable("budgets are changing too fast to reserve on; retry")
        return self._decided(task, trace, decision_id, selection, model, policy, NO_CHANGE, now)

    def _select(self, task: domain.Task, state: RoutingState, now: float,
                uncallable: Uncallable | None) -> tuple[domain.Selection, str]:
        policy = resolve_policy(task, state.catalog)
        view = build_view(task, policy, state, self.learner, self.ledger,
                          self.ev_window.threshold(), now, self._rng, uncallable)
        return decide(task, state.catalog, view), policy.name

    def _decided(self, task: domain.Task, trace: TraceIds, decision_id: str,
                 selection: domain.Selection, model: domain.ModelSpec | None, policy: str,
                 change: LedgerChange, now: float) -> Decided:
        """Count the decision (probe, exploration, EV) once, and build its answer and row."""
        budgets: tuple[domain.BudgetStatus, ...] = ()
        if model is not None:
            budgets = tuple(self.ledger.statuses_for(task.labels, model, policy, task.task_id,
                                                     now))
        if not task.dry_run:
            self.learner.after_decision(task.task_type, model, selection.explored, now)
        # The task's own EV joins the window after it is judged, so it never raises its own bar.
        if task.ev is not None:
            self.ev_window.add(task.ev)
        decision = domain.Decision(decision_id, task.task_id, now, selection, task.dry_run,
                                   budgets)
        record = DecisionRecord.from_decision(decision, task, self.state.config_hash,
                                              trace.trace_id, trace.span_id)
        return Decided(decision, record, change)

    def decide_cached(self, task: domain.Task, entry: domain.CacheEntry,
                      trace: TraceIds = NO_TRACE) -> Decided:
        """A CACHE_HIT decision answered by a stored entry: audited, reserving nothing."""
        catalog = self.state.catalog
        task = self.limits.admit(task, self.state.settings.limits)  # as decide() admits it
        check_task(task, catalog)
        now = self._clock.now()
        selection = cached_selection(task, resolve_policy(task, catalog), entry, catalog, now)
        decision = domain.Decision(self._new_id(), task.task_id, now, selection, task.dry_run,
                                   cached=entry)
        record = DecisionRecord.from_decision(decision, task, self.state.config_hash,
                                              trace.trace_id, trace.span_id)
        return Decided(decision, record, NO_CHANGE)

    async def route(self, task: domain.Task, trace: TraceIds = NO_TRACE) -> domain.Decision:
        """Decide one task; acknowledged only once its audit row and reservation commit.

        `trace` names the caller's span so ReportOutcome can attach attempt spans to it later.
        A `cache_key` with a stored value answers CACHE_HIT instead (decision mode).
        """
        return await self.finish(await self.begin(task, trace))

    async def begin(self, task: domain.Task, trace: TraceIds = NO_TRACE) -> Routed:
        """The first half of `route`: look up the cache, decide and reserve; nothing written.

        Every refusal of the task itself (a bad field, a label cap) is raised here, so a
        stream can decide its messages in order and commit them side by side.
        """
        cache = self.cache
        if cache is not None:  # the key's tenant is read from the labels as decide() sees them
            task = self.limits.admit(task, self.state.settings.limits)
        key = cache.route_key(task, resolve_policy(task, self.catalog).name) if cache else None
        if cache is None or key is None:
            return Routed(await self.decide(task, trace, admitted=cache is not None))
        entry = await cache.lookup(key, project_of(task))
        if entry is not None:
            return Routed(self.decide_cached(task, entry, trace))
        decided = await self.decide(task, trace, admitted=True)
        if task.dry_run or decided.decision.selection.chosen is None:
            return Routed(decided)
        # A miss that will run: its outcome may store a value under the key.
        return Routed(decided, lambda: cache.remember(decided.decision.decision_id, key,
                                                      project_of(task)))

    async def finish(self, routed: Routed) -> domain.Decision:
        """The second half of `route`: commit the audit row (and the cache key to remember)."""
        if routed.remember is None:
            await self.commit(routed.decided)
        else:
            await asyncio.gather(self.commit(routed.decided), routed.remember())
        return routed.decided.decision

    async def commit(self, decided: Decided) -> None:
        """Write a decision's audit row with its reservation rows; undo them if that fails."""
        try:
            await self._audit.record_decision(decided.record, decided.change.entries)
        except StorageError:
            await self.ledger.revert(decided.change)
            raise
