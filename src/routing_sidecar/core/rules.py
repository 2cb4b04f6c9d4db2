"""Task -> policy, objective and tier ceiling, plus the percentile behind EV claims."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from routing_sidecar.core.catalog import Catalog, CompiledMatch
from routing_sidecar.domain import Match, Objective, Policy, Task, TierRules
from routing_sidecar.errors import InvalidArgument


def matches(match: Match, task: Task) -> bool:
    """Check that the task meets every condition of the match."""
    # Globs are compiled through a cache, so this stays cheap even outside a Catalog.
    return CompiledMatch.of(match).matches(task)


def resolve_policy(task: Task, catalog: Catalog) -> Policy:
    """Return the override policy, else the first matching rule's, else the default."""
    if task.policy:
        policy = catalog.policies.get(task.policy)
        if policy is None:
            raise InvalidArgument("policy", f"unknown policy {task.policy!r}")
        return policy
    rule = catalog.first_rule(task)
    name = rule.policy if rule is not None else catalog.default_policy
    return catalog.policies[name]


def resolve_objective(task: Task, policy: Policy, catalog: Catalog) -> Objective:
    """Explicit objective, else the policy's, else the task shape's, else balanced."""
    if task.objective is not Objective.AUTO:
        return task.objective
    if policy.objective is not None and policy.objective is not Objective.AUTO:
        return policy.objective
    shape = catalog.first_shape(task)
    return shape.objective if shape is not None else Objective.BALANCED


def is_critical(task: Task, policy: Policy, critical_lanes: Collection[str]) -> bool:
    """True when the policy is critical or the task's `lane` label names a critical lane."""
    if policy.critical:
        return True
    lane = task.labels.get("lane")
    return lane is not None and lane in critical_lanes


def tier_ceiling(
    task: Task, tiers: TierRules, cheapest_tier: int, ev_threshold: float | None
) -> int | None:
    """Return the highest tier the task may use, or None when it claims every tier."""
    ev = task.ev
    if task.priority >= tiers.priority_override or (
        ev is not None and ev_threshold is not None and ev > ev_threshold
    ):
        return None
    # Never below the cheapest capable tier: a task some model can do must stay routable.
    return max(tiers.reserve_above, cheapest_tier)


def reservation_reason(task: Task, tiers: TierRules, ev_threshold: float | None) -> str:
    """Say why the task could not claim reserved tiers (neither ev nor priority sufficed)."""
    pct = f"P{tiers.ev_percentile:g}"
    if task.ev is None:
        why = "no ev given"
    elif ev_threshold is None:
        why = f"ev {task.ev:.2f} but too few recent EVs for a {pct}"
    else:
        why = f"ev {task.ev:.2f} not above recent {pct} {ev_threshold:.2f}"
    return f"{why} and priority {task.priority} < {tiers.priority_override}"


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Return the pct-th percentile (0..100), linearly interpolated; None when empty."""
    if not 0.0 <= pct <= 100.0:  # also rejects NaN
        raise ValueError(f"percentile must be within 0..100, got {pct}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    frac = rank - low
    return ordered[low] + (ordered[high] - ordered[low]) * frac
