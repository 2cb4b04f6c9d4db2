"""The fleet's budgets with Redis in trouble: fail closed, or spend a bounded share alone.

`FleetBudgets` is the BudgetBook a fleet sidecar routes on. While the shared ledger answers,
everything goes to it. When it does not:

- `on_redis_down: reject`: a task with a budget is refused (REASON_CODE_BUDGET_UNAVAILABLE);
- `on_redis_down: local`: the sidecar spends at most `local_share` of each limit on its own,
  in a local ledger, never more;

and in both modes an outcome's charges are queued durably (the outbox) before it is
acknowledged, then replayed in order once Redis answers again, so nothing acknowledged is lost
and local spend is reconciled into the shared totals.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import tzinfo
from typing import Literal

from routing_sidecar.core.budget import Ledger
from routing_sidecar.core.budget_rules import NO_CHANGE, LedgerChange
from routing_sidecar.core.view import BudgetLine
from routing_sidecar.domain import BudgetRule, BudgetStatus, ModelSpec
from routing_sidecar.errors import BudgetUnavailable
from routing_sidecar.ports import BudgetBook, PendingQueue, PendingSettle

log = logging.getLogger(__name__)
DownMode = Literal["reject", "local"]


def shares_of(rules: Sequence[BudgetRule], share: float) -> tuple[BudgetRule, ...]:
    """The rules with each limit cut to the share a sidecar may spend alone."""
    return tuple(dataclasses.replace(r, limit_micros=int(r.limit_micros * share)) for r in rules)


class FleetBudgets:
    """A shared BudgetBook, a bounded local fallback, and the outbox between them."""

    def __init__(self, shared: BudgetBook, rules: Sequence[BudgetRule], tz: tzinfo, *,
                 mode: DownMode, local_share: float, outbox: PendingQueue,
                 models: Callable[[], Mapping[str, ModelSpec]]) -> None:
        self._shared = shared
        self._rules = tuple(rules)
        self._mode = mode
        self._share = local_share
        self._tz = tz
        self._local = Ledger(shares_of(rules, local_share), tz)
        self._local_ids: set[str] = set()  # reservations made alone, while Redis was away
        self._outbox = outbox
        self._models = models
        self.replayed = 0

    @property
    def _alone(self) -> bool:
        return self._mode == "local" and self._shared.unavailable is not None

    @property
    def unavailable(self) -> str | None:
        """Why budgets cannot be checked (only when they fail closed)."""
        return None if self._mode == "local" else self._shared.unavailable

    def lines(self, labels: Mapping[str, str], model: ModelSpec, policy: str, task_id: str,
              now: float) -> tuple[BudgetLine, ...]:
        """The shared lines, or while alone the local share's."""
        book = self._local if self._alone else self._shared
        return book.lines(labels, model, policy, task_id, now)

    def statuses_for(self, labels: Mapping[str, str], model: ModelSpec, policy: str,
                     task_id: str, now: float) -> list[BudgetStatus]:
        """Standing of one decision's budgets, where they are kept right now."""
        book = self._local if self._alone else self._shared
        return book.statuses_for(labels, model, policy, task_id, now)

    def cached_status(self, now: float, scopes: Collection[str] = ()) -> list[BudgetStatus]:
        """The shared figures as last seen."""
        return self._shared.cached_status(now, scopes)

    async def status(self, now: float, scopes: Collection[str] = ()) -> list[BudgetStatus]:
        """The shared figures, fresh; while alone in local mode, the local share's."""
        try:
            return await self._shared.status(now, scopes)
        except BudgetUnavailable:
            if self._mode == "local":
                return self._local.status(now, scopes)
            raise

    async def reserve(self, reservation_id: str, labels: Mapping[str, str], model: ModelSpec,
                      policy: str, task_id: str, amount_micros: int, now: float,
                      expires_at: float) -> tuple[BudgetLine | None, LedgerChange]:
        """Reserve in Redis; while it is away, in the local share (local mode) or not at all."""
        try:
            return await self._shared.reserve(reservation_id, labels, model, policy, task_id,
                                              amount_micros, now, expires_at)
        except BudgetUnavailable:
            if self._mode != "local":
                raise
        block, change = self._local.reserve(reservation_id, labels, model, policy, task_id,
                                            amount_micros, now, expires_at)
        if block is None:
            self._local_ids.add(reservation_id)
        return block, change

    async def settle(self, reservation_id: str, labels: Mapping[str, str], policy: str,
                     task_id: str, charges: Sequence[tuple[ModelSpec, int]], at: float,
                     now: float) -> LedgerChange:
        """Settle where the reservation lives; queue for Redis what it has not seen."""
        pending = PendingSettle(reservation_id, dict(labels), policy, task_id,
                                tuple((m.name, a) for m, a in charges), at, now)
        if reservation_id in self._local_ids:
            self._local_ids.discard(reservation_id)
            change = self._local.settle(reservation_id, labels, policy, task_id, charges, at,
                                        now)
            await self._outbox.add(pending)  # the spend reaches the shared totals later
            return change
        try:
            return await self._shared.settle(reservation_id, labels, policy, task_id, charges,
                                             at, now)
        except BudgetUnavailable:
            await self._outbox.add(pending)
            log.warning("outcome kept for the shared ledger",
                        extra={"decision_id": reservation_id})
            return NO_CHANGE

    async def release(self, reservation_id: str, now: float) -> LedgerChange:
        """Release where the reservation lives (a shared one Redis cannot hear expires)."""
        if reservation_id in self._local_ids:
            self._local_ids.discard(reservation_id)
            return self._local.release(reservation_id, now)
        try:
            return await self._shared.release(reservation_id, now)
        except BudgetUnavailable:
            return NO_CHANGE

    async def expire(self, now: float) -> LedgerChange:
        """Expire locally held reservations, then the shared ones when Redis answers."""
        local = self._local.expire(now)
        self._local_ids -= {rid for rid, _, _ in local.closed}
        try:
            shared = await self._shared.expire(now)
        except BudgetUnavailable:
            return local
        return LedgerChange(local.entries + shared.entries, (), (), local.closed + shared.closed)

    async def revert(self, change: LedgerChange) -> None:
        """Undo a change in the book that made it."""
        ids = {e.reservation_id for e in change.entries} | set(change.opened)
        if ids & self._local_ids or any(rid in self._local_ids for rid, _, _ in change.closed):
            self._local.revert(change)
            return
        await self._shared.revert(change)

    def replace_rules(self, rules: Sequence[BudgetRule]) -> None:
        """Swap in reloaded rules in both books."""
        self._rules = tuple(rules)
        self._shared.replace_rules(rules)
        self._local.replace_rules(shares_of(rules, self._share))

    async def replay(self) -> int:
        """Apply the queued settles to the shared ledger, oldest first; how many were applied.

        A settle is idempotent by reservation in Redis, so a replay interrupted half way (or a
        queued settle whose outcome was later reported again) never charges twice.
        """
        applied = 0
        models = self._models()
        for row_id, op in await self._outbox.pending():
            charges = [(models[m], a) for m, a in op.charges if m in models]
            try:
                await self._shared.settle(op.reservation_id, op.labels, op.policy, op.task_id,
                                          charges, op.at, op.now)
            except BudgetUnavailable:
                break
            await self._outbox.done(row_id)
            applied += 1
        if applied:
            self.replayed += applied
            log.info("queued outcomes applied to the shared ledger", extra={"count": applied})
        if self._shared.unavailable is None and not self._local_ids:
            # Back together: the next outage starts from a fresh share.
            self._local = Ledger(shares_of(self._rules, self._share), self._tz)
        return applied
