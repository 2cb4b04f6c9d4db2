"""Task -> policy and task -> objective resolution, plus the percentile used for EV claims."""

from __future__ import annotations

import math
from collections.abc import Sequence

from routing_sidecar.core.catalog import Catalog, CompiledMatch
from routing_sidecar.domain import Match, Objective, Policy, Task
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
