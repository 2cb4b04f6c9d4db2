"""Scores candidates by the objective's weights; builds the provider-diverse fallback chain."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    Objective.QUALITY: Weights(cost=0.05, speed=0.05, quality=0.9),
    # AUTO is resolved before scoring; mapping it keeps a stray AUTO from crashing a route.
    Objective.AUTO: _BALANCED,
})

# Near the context limit output gets truncated and quality drops, so crowded windows lose
# up to CONTEXT_PENALTY_MAX, growing linearly from CONTEXT_PENALTY_START to a full window.
CONTEXT_PENALTY_START = 0.8
# The cost score of the cheapest paid model (a free one scores 1), and the price span in
# decades over which the cost score falls from there to 0.
PAID_TOP = 0.9
COST_DECADES = 2.0
CONTEXT_PENALTY_MAX = 0.3
SCORE_DIGITS = 4
T = TypeVar("T")


def cheapest_paid(costs: Iterable[int]) -> int:
    """The lowest non-zero cost among the candidates (0 when every one is free)."""
    return min((c for c in costs if c > 0), default=0)


def normalised_cost(cost_micros: int, cheapest_paid_micros: int) -> float:
    """Cost as a 0..1 score on a log scale: free 1, the cheapest paid model PAID_TOP.

    Each tenfold price step costs PAID_TOP / COST_DECADES, down to 0 at COST_DECADES decades
    above the cheapest paid model. A ratio (cheapest / cost) would give every paid model 0
    beside a free one; on a log scale free, cheap and expensive keep their order and distance.
    """
    if cost_micros <= 0:
        return 1.0
    ref = cheapest_paid_micros if cheapest_paid_micros > 0 else cost_micros
    decades = math.log10(cost_micros / ref) if cost_micros > ref else 0.0
    return max(0.0, PAID_TOP * (1.0 - decades / COST_DECADES))


def context_penalty(fill: float) -> float:
    """Penalty for using fill (0..1) of a context window: 0 up to 0.8, then up to 0.3 at 1."""
    if fill <= CONTEXT_PENALTY_START:
        return 0.0
    over = min(1.0, (fill - CONTEXT_PENALTY_START) / (1.0 - CONTEXT_PENALTY_START))
    return CONTEXT_PENALTY_MAX * over


def score(
    cost_micros: int,
    cheapest_paid_micros: int,
    tokens_per_s: float,
    max_tokens_per_s: float,
    quality: float,
    fill: float,
    weights: Weights,
    penalty: float = 0.0,
) -> float:
    """Score one candidate against the set's cheapest paid cost and top speed, to 4 decimals.

    `penalty` (health demotion, 0 for a healthy model) is subtracted before rounding.
    """
    speed_norm = tokens_per_s / max_tokens_per_s if max_tokens_per_s > 0 else 1.0
    q = 0.0 if quality < 0.0 else min(quality, 1.0)
    raw = (weights.cost * normalised_cost(cost_micros, cheapest_paid_micros)
           + weights.speed * speed_norm + weights.quality * q)
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
