"""Keeps one sidecar in step with its fleet: breakers, learned quality, budget copies, outbox.

Breaker changes are published the moment an outcome makes them (`poke`); every
`sync_interval_s` the sidecar pushes what it learned, pulls what the fleet learned, refreshes its
copy of the budget totals decisions read, and replays the outcomes Redis has not seen yet. A
round that cannot reach Redis is logged and tried again next round; nothing here is on the
decision path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from routing_sidecar.errors import BudgetUnavailable
from routing_sidecar.ports import Clock, SharedHealth, SharedQuality
from routing_sidecar.service.fleet_budgets import FleetBudgets
from routing_sidecar.service.learning import Learner
from routing_sidecar.waiting import stop_task, wake_or_timeout

log = logging.getLogger(__name__)
PULLED_TYPES = 256  # the most recently updated task types refreshed from the fleet each round


class FleetSync:
    """The background loop between this sidecar's books and the fleet's."""

    def __init__(self, learner: Learner, budgets: FleetBudgets, health: SharedHealth,
                 quality: SharedQuality, clock: Clock, *, interval_s: float,
                 models: Callable[[], Iterable[str]],
                 refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        self._learner = learner
        self._budgets = budgets
        self._health = health
        self._quality = quality
        self._clock = clock
        self._interval = interval_s
        self._models = models
        self._refresh = refresh  # re-reads the budget totals decisions asked about
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._joined = False
        self.rounds = 0

    async def start(self) -> None:
        """Take the fleet's open breakers, then keep in step until stopped.

        Redis being out of reach does not stop a start: the channel is joined once it answers.
        """
        learner = self._learner
        learner.shared = []
        learner.on_observed = self.poke
        self._joined = await self._join()
        self._task = asyncio.create_task(self._run(), name="fleet-sync")

    async def _join(self) -> bool:
        learner = self._learner
        try:
            await self._health.start(lambda c: learner.health.apply_remote(c, self._clock.now()))
        except Exception:
            log.warning("fleet breaker channel unreachable; joining later")
            return False
        return True

    def poke(self) -> None:
        """An outcome was just learned from: publish any breaker change now."""
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await wake_or_timeout(self._wake, due - loop.time())
            self._wake.clear()
            if not self._joined:
                self._joined = await self._join()
            await self._guarded(self.publish_breakers)
            if loop.time() >= due:
                await self._guarded(self.sync_once)
                due = loop.time() + self._interval
                self.rounds += 1

    async def _guarded(self, step: Callable[[], Awaitable[None]]) -> None:
        try:
            await step()
        except BudgetUnavailable:
            pass  # already logged once by the ledger; the next round tries again
        except Exception:  # a fleet round must never stop the loop
            log.warning("fleet sync step failed; retrying next round", exc_info=True)

    async def publish_breakers(self) -> None:
        """Send this sidecar's breaker changes to the fleet."""
        changes = self._learner.health.drain_changes()
        if changes:
            await self._health.publish(changes)

    async def sync_once(self) -> None:
        """Push and pull learned quality, refresh budget copies, replay the outbox."""
        learner = self._learner
        pending, learner.shared = learner.shared or [], []
        try:
            await self._quality.push(pending)
        except Exception:
            learner.shared = pending + (learner.shared or [])  # kept for the next round
            raise
        book = learner.quality
        kinds = [*book.task_types()[-PULLED_TYPES:], *book.drain_unseen()]
        rows, pooled = await self._quality.pull(kinds, list(self._models()))
        book.merge(rows, pooled)
        if self._refresh is not None:
            await self._refresh()
        await self._budgets.replay()

    async def stop(self) -> None:
        """Stop the loop and the breaker channel; one last push of what was learned."""
        await stop_task(self._task)
        with contextlib.suppress(Exception):
            await self.publish_breakers()
            await self._quality.push(self._learner.shared or [])
        await self._health.stop()
