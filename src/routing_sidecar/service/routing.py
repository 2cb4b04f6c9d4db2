"""Route: validate a task against the catalog, run the core, attach id and time."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from routing_sidecar import domain
from routing_sidecar.core.catalog import Catalog
from routing_sidecar.core.selection import Signals, select
from routing_sidecar.errors import InvalidArgument
from routing_sidecar.ports import Clock
from routing_sidecar.service.ev import EvWindow


def new_decision_id() -> str:
    """A random, unguessable decision id."""
    return uuid.uuid4().hex


def check_task(task: domain.Task, catalog: Catalog) -> None:
    """Reject references the catalog does not know, naming the field."""
    for i, slot in enumerate(task.available_slots):
        if slot.model not in catalog.models:
            raise InvalidArgument(f"available_slots[{i}].model", f"unknown model {slot.model!r}")
    if task.policy is not None and task.policy not in catalog.policies:
        raise InvalidArgument("policy", f"unknown policy {task.policy!r}")


class RoutingService:
    """Decides tasks; holds the few pieces of state decisions depend on."""

    def __init__(
        self,
        catalog: Catalog,
        clock: Clock,
        new_id: Callable[[], str] = new_decision_id,
    ) -> None:
        self.catalog = catalog
        self._clock = clock
        self._new_id = new_id
        tiers = catalog.tiers
        self.ev_window = EvWindow(tiers.ev_window, tiers.ev_percentile, tiers.ev_min_samples)

    def signals(self) -> Signals:
        """The outside inputs for the next decision."""
        return Signals(ev_threshold=self.ev_window.threshold())

    async def route(self, task: domain.Task) -> domain.Decision:
        """Decide one task."""
        check_task(task, self.catalog)
        selection = select(task, self.catalog, self.signals())
        # The task's own EV joins the window after it is judged, so it never raises its own bar.
        if task.ev is not None:
            self.ev_window.add(task.ev)
        return domain.Decision(
            decision_id=self._new_id(),
            task_id=task.task_id,
            decided_at=self._clock.now(),
            selection=selection,
            dry_run=task.dry_run,
        )
