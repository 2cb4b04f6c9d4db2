"""Build the immutable view one decision is made over, reading every stateful signal once."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from routing_sidecar import domain
from routing_sidecar.core.rules import is_critical
from routing_sidecar.core.view import DecisionView, Exploration
from routing_sidecar.ports import BudgetBook
from routing_sidecar.service.learning import Learner

if TYPE_CHECKING:
    from routing_sidecar.service.routing import RoutingState


Uncallable = Callable[[domain.ModelSpec], str | None]


def build_view(task: domain.Task, policy: domain.Policy, state: RoutingState, learner: Learner,
               ledger: BudgetBook, ev_threshold: float | None, now: float,
               rng: random.Random, uncallable: Uncallable | None = None) -> DecisionView:
    """Budget lines, breakers, demotion and learned quality of the policy's models, now.

    Exploration draws are made here, once, and only when this decision may explore: it has a
    quality floor or a value, is not on a critical lane or policy, and its task type's
    exploration share is not spent. `uncallable` (execute mode) says why the sidecar could not
    call a model itself (no adapter for its provider, no key).
    """
    models = state.catalog.candidates(policy)
    kind = task.task_type
    health, quality = learner.health, learner.quality
    exploration = Exploration.OFF
    floor = task.requires.min_quality is not None or policy.quality_floor is not None
    if (floor or task.value_micros is not None) and not is_critical(
            task, policy, state.catalog.critical_lanes):
        exploration = quality.exploration(kind)
    draws = rng if exploration is Exploration.ON else None
    signals = {m.name: quality.signal(kind, m.name, draws) for m in models}
    breakers = {}
    penalties = {}
    for m in models:
        why = health.blocked(m, now)
        if why is not None:
            breakers[m.name] = why
        penalty = health.penalty(m, now)
        if penalty > 0.0:
            penalties[m.name] = penalty
    budgets = {}
    if state.settings.budgets:
        budgets = {m.name: ledger.lines(task.labels, m, policy.name, task.task_id, now)
                   for m in models}
    cannot = {}
    if uncallable is not None:
        cannot = {m.name: why for m in models if (why := uncallable(m)) is not None}
    return DecisionView(
        now=now, ev_threshold=ev_threshold, quality=signals, breakers=breakers,
        penalties=penalties, budgets=budgets, paused=state.paused, uncallable=cannot,
        exploration=exploration,
        budgets_unavailable=ledger.unavailable if state.settings.budgets else None)
