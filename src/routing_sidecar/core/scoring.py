"""Scores candidates by the objective's weights; builds the provider-diverse fallback chain."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

from routing_sidecar.domain import Objective


@dataclass(frozen=True, slots=True)
class Weights:
    """How much each normalised dimension counts; the three sum to 1."""

    cost: float
    speed: float
    quality: float


_BALANCED = Weights(cost=0.35, speed=0.15, quality=0.5)

WEIGHTS: Mapping[Objective, Weights] = MappingProxyType({
    Objective.COST_SPEED: Weights(cost=0.6, speed=0.3, quality=0.1),
    Objective.BALANCED: _BALANCED,
    Objective.QUALITY: Weights(cost=0.1, speed=0.1, quality=0.8),
    # AUTO is resolved before scoring; mapping it keeps a stray AUTO from crashing a route.
    Objective.AUTO: _BALANCED,
})

# Near the context limit output gets truncated and quality drops, so crowded windows lose
# up to CONTEXT_PENALTY_MAX, growing linearly from CONTEXT_PENALTY_START to a full window.
CONTEXT_PENALTY_START = 0.8
CONTEXT_PENALTY_MAX = 0.3
SCORE_DIGITS = 4
T = TypeVar("T")


def weights_for(objective: Objective) -> Weights:
    """Return the weight row for an objective."""
    return WEIGHTS[objective]


def normalised_cost(cost_micros: int, min_cost_micros: int) -> float:
    """min/cost in 0..1 (cheapest = 1); a ratio, so orders of magnitude matter."""
    if cost_micros <= min_cost_micros:
        return 1.0  # the cheapest, including free models
    return min_cost_micros / cost_micros


def context_penalty(fill: float) -> float:
    """Penalty for using fill (0..1) of a context window: 0 up to 0.8, then up to 0.3 at 1."""
    if fill <= CONTEXT_PENALTY_START:
        return 0.0
    over = min(1.0, (fill - CONTEXT_PENALTY_START) / (1.0 - CONTEXT_PENALTY_START))
    return CONTEXT_PENALTY_MAX * over


def score(
    cost_micros: int,
    min_cost_micros: int,
    tokens_per_s: float,
    max_tokens_per_s: float,
    quality: float,
    fill: float,
    weights: Weights,
    penalty: float = 0.0,
) -> float:
    """Score one candidate against the set's cheapest cost and top speed, to 4 decimals.

    `penalty` (health demotion, 0 for a healthy model) is subtracted before rounding.
    """
    # Inlined normalisation: this runs once per candidate on every route.
    cost_norm = 1.0 if cost_micros <= min_cost_micros else min_cost_micros / cost_micros
    speed_norm = tokens_per_s / max_tokens_per_s if max_tokens_per_s > 0 else 1.0
    q = 0.0 if quality < 0.0 else min(quality, 1.0)
    raw = weights.cost * cost_norm + weights.speed * speed_norm + weights.quality * q
    if fill > CONTEXT_PENALTY_START:
        raw -= context_penalty(fill)
    return round(raw - penalty, SCORE_DIGITS)


def fallback_chain(
    ranked: Sequence[T], provider: Callable[[T], str], size: int
) -> list[tuple[T, bool]]:
    """Pick up to size fallbacks after ranked[0], each as (item, on a new provider?).

    Greedy: the best remaining item whose provider is not yet used by the chosen one or the
    chain, so one provider's outage cannot take out the whole chain; when every remaining
    item's provider is used, the best remaining regardless.
    """
    rest = list(ranked[1:])
    used = {provider(ranked[0])} if ranked else set()
    chain: list[tuple[T, bool]] = []
    while rest and len(chain) < size:
        at = next((i for i, item in enumerate(rest) if provider(item) not in used), None)
        pick = rest.pop(0 if at is None else at)
        used.add(provider(pick))
        chain.append((pick, at is not None))
    return chain
