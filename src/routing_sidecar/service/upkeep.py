"""Background upkeep: expire stale reservations and prune old decisions."""

from __future__ import annotations

import asyncio
import logging

from routing_sidecar.errors import StorageError
from routing_sidecar.ports import AuditLog, BudgetBook, Clock, LedgerStore
from routing_sidecar.service.learning import Learner

log = logging.getLogger(__name__)
DAY_S = 86_400.0


class Upkeep:
    """Runs expiry and learned-state snapshots every few seconds, retention pruning hourly."""

    def __init__(
        self,
        ledger: BudgetBook,
        ledger_store: LedgerStore,
        audit: AuditLog,
        clock: Clock,
        learner: Learner,
        *,
        interval_s: float,
        retention_days: int,
        prune_every_s: float = 3600.0,
    ) -> None:
        self._ledger = ledger
        self._ledger_store = ledger_store
        self._audit = audit
        self._clock = clock
        self._learner = learner
        self.interval_s = interval_s
        self.retention_days = retention_days
        self._prune_every_s = prune_every_s
        self._last_prune = float("-inf")

    async def expire_once(self) -> int:
        """Release reservations past their expiry; returns how many rows were written."""
        change = await self._ledger.expire(self._clock.now())
        rows = change.entries
        if not rows:
            return 0
        try:
            await self._ledger_store.record_ledger(rows)
        except StorageError:
            await self._ledger.revert(change)
            raise
        log.info("reservations expired", extra={"rows": len(rows)})
        return len(rows)

    async def prune_once(self) -> int:
        """Delete decisions older than the retention period."""
        cutoff = self._clock.now() - self.retention_days * DAY_S
        removed = await self._audit.prune(cutoff)
        if removed:
            log.info("old decisions pruned", extra={"rows": removed})
        return removed

    async def save_learned(self) -> None:
        """Snapshot health and learned quality, so a restart resumes from them."""
        now = self._clock.now()
        for book, state in self._learner.dump().items():
            await self._audit.save_learned(book, state, now)

    async def run(self) -> None:
        """Loop until cancelled; a failing round is logged and retried next round."""
        while True:
            try:
                await self.expire_once()
                await self.save_learned()
                if self._clock.monotonic() - self._last_prune >= self._prune_every_s:
                    self._last_prune = self._clock.monotonic()
                    await self.prune_once()
            except StorageError:
                log.exception("upkeep round failed; retrying")
            await asyncio.sleep(self.interval_s)
