"""Between a walk's attempts: the breakers and budgets of the models after the chosen one.

The decision reserved its estimate for the chosen model only. Before the walk moves to another
model (a fallback, a hedge, a resumed stream), `FallbackHolds.admit` checks that model's breaker
and budget lines again (they may have changed since the decision) and reserves its estimate
under a reservation of its own, `<decision_id>:<position>`, persisted with the ledger rows;
`release` drops those reservations when the walk is settled, so the holds never outlive it.
"""

from __future__ import annotations

import logging

from routing_sidecar.core.candidates import first_block
from routing_sidecar.errors import BudgetUnavailable, StorageError
from routing_sidecar.records import DecisionRecord
from routing_sidecar.service.attempt import Step
from routing_sidecar.service.budgets import log_alerts
from routing_sidecar.service.complete import CompleteService

log = logging.getLogger(__name__)


class FallbackHolds:
    """Admission of the models after the chosen one, and the reservations it takes."""

    def __init__(self, service: CompleteService, record: DecisionRecord,
                 labels: dict[str, str]) -> None:
        self._svc = service
        self._record = record
        self._labels = labels  # as the decision admitted them: what it reserved on
        self._reserved: list[str] = []
        self.skipped: list[str] = []  # "model: why", for the error of a failed walk
        self.retryable = True  # every skip so far is one that time heals (a breaker)

    def note(self, why: str) -> None:
        """A skip that is not about one model (the deadline left no time)."""
        self.skipped.append(why)

    async def admit(self, step: Step) -> bool:
        """True when the step's model may run now; its estimate is then reserved."""
        svc = self._svc
        now = svc.clock.now()
        learner = svc.routing.learner
        why = learner.health.blocked(step.spec, now)
        if why is None and (step.client is None or not step.client.has_credentials()):
            why = f"no credentials for provider {step.spec.provider!r}"
        if why is None:
            why = await self._reserve(step, now)
        if why is not None:
            self.skipped.append(f"{step.spec.name}: {why}")
            self.retryable = self.retryable and why.startswith("circuit")
            log.info("fallback skipped", extra={"model": step.spec.name, "why": why})
            return False
        learner.health.on_routed(step.spec, now)  # it claims a half-open probe, if any
        return True

    async def _reserve(self, step: Step, now: float) -> str | None:
        """Reserve the step's estimate under an id of its own; why not, or None."""
        record = self._record
        ledger = self._svc.routing.ledger
        if ledger.unavailable is not None:
            return ledger.unavailable
        lines = ledger.lines(self._labels, step.spec, record.policy, record.task_id, now)
        block = first_block(lines, step.estimate_micros)
        if block is not None:
            return block.reason(step.estimate_micros)
        rid = f"{record.decision_id}:{step.position}"
        ttl = self._svc.routing.state.settings.ledger.reservation_ttl_s
        try:
            block, change = await ledger.reserve(rid, self._labels, step.spec, record.policy,
                                                 record.task_id, step.estimate_micros, now,
                                                 now + ttl)
        except BudgetUnavailable as exc:
            return exc.message
        if block is not None:
            return block.reason(step.estimate_micros)
        try:
            await self._svc.ledger_store.record_ledger(change.entries)
        except StorageError:
            await ledger.revert(change)
            return "the store could not record its reservation"
        self._reserved.append(rid)
        log_alerts(change.alerts, self._svc.routing.alert_hook)
        return None

    async def release(self) -> None:
        """Drop every reservation taken; one that cannot be dropped expires at its TTL."""
        ledger = self._svc.routing.ledger
        now = self._svc.clock.now()
        for rid in self._reserved:
            released = False
            try:
                change = await ledger.release(rid, now)
                try:
                    await self._svc.ledger_store.record_ledger(change.entries)
                    released = True
                except StorageError:
                    await ledger.revert(change)  # memory keeps what disk has
            except BudgetUnavailable:
                pass
            if not released:
                log.error("a fallback reservation could not be released; it expires at its "
                          "TTL", extra={"reservation": rid})
        self._reserved = []
