"""What a reported outcome may claim: sanity bounds decided before anything is charged.

Pure. An orchestrator reports what it spent; one typo (a cost of 10^12, a start in the year
9999, 32 attempts on a model the decision never named) must not be able to wreck every budget
or the trace exporter. Violations are InvalidArgument naming the field, and charge nothing.
Attempts on models outside the decision's plan are allowed (orchestrators improvise), but
flagged so the audit row and the span can say so.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace

from routing_sidecar.core.catalog import Catalog
from routing_sidecar.domain import Attempt, Outcome
from routing_sidecar.errors import InvalidArgument
from routing_sidecar.quick_init import quick_init
from routing_sidecar.settings import OutcomeLimits


@quick_init
@dataclass(frozen=True, slots=True)
class CheckedAttempt:
    """An attempt that passed the checks, its cost resolved, and whether the plan named it."""

    attempt: Attempt
    cost_micros: int
    off_plan: bool


DEFAULT_LIMITS = OutcomeLimits()


def check_outcome(outcome: Outcome, catalog: Catalog, plan: Collection[str], decided_at: float,
                  now: float, limits: OutcomeLimits = DEFAULT_LIMITS
                  ) -> tuple[CheckedAttempt, ...]:
    """Every attempt of the outcome checked against the catalog, its tokens and the clock."""
    if len(outcome.attempts) > limits.max_attempts:
        raise InvalidArgument("attempts", f"has {len(outcome.attempts)} entries; at most "
                              f"{limits.max_attempts} allowed")
    return tuple(_check(i, a, catalog, plan, decided_at, now, limits)
                 for i, a in enumerate(outcome.attempts))


def _check(i: int, a: Attempt, catalog: Catalog, plan: Collection[str], decided_at: float,
           now: float, limits: OutcomeLimits) -> CheckedAttempt:
    where = f"attempts[{i}]"
    spec = catalog.models.get(a.model)
    if spec is None:
        raise InvalidArgument(f"{where}.model", f"unknown model {a.model!r}")
    if a.provider and a.provider != spec.provider:
        raise InvalidArgument(f"{where}.provider",
                              f"model {a.model!r} is served by {spec.provider!r}, not "
                              f"{a.provider!r}")
    if a.input_tokens + a.output_tokens > spec.context_window:
        raise InvalidArgument(f"{where}.input_tokens",
                              f"{a.input_tokens} input + {a.output_tokens} output tokens exceed "
                              f"{a.model}'s context window of {spec.context_window}")
    priced = spec.cost_micros(a.input_tokens, a.output_tokens)
    cost = priced if a.cost_micros is None else a.cost_micros
    ceiling = int(priced * limits.cost_tolerance) + limits.cost_slack_micros
    if cost > ceiling:
        raise InvalidArgument(f"{where}.cost_micros",
                              f"{cost} is more than {a.input_tokens} input and "
                              f"{a.output_tokens} output tokens of {a.model} can cost "
                              f"(at most {ceiling})")
    skew = limits.clock_skew_s
    if a.started_at is not None:
        if a.started_at < decided_at - skew:
            raise InvalidArgument(f"{where}.started_at", "is before the decision was made")
        if a.started_at > now + skew:
            raise InvalidArgument(f"{where}.started_at", "is in the future")
    if a.duration_s > now - decided_at + skew:
        raise InvalidArgument(f"{where}.duration",
                              f"{a.duration_s:g}s is longer than the decision has existed")
    attempt = a if a.provider else replace(a, provider=spec.provider)
    return CheckedAttempt(attempt, cost, a.model not in plan)
