"""Weights table, normalisation, context penalty and rounding."""

from __future__ import annotations

import pytest

from routing_sidecar.core.scoring import (
    WEIGHTS,
    Weights,
    context_penalty,
    fallback_chain,
    normalised_cost,
    score,
)
from routing_sidecar.domain import Objective


@pytest.mark.parametrize(
    ("objective", "expected"),
    [
        (Objective.COST_SPEED, Weights(0.6, 0.3, 0.1)),
        (Objective.BALANCED, Weights(0.35, 0.15, 0.5)),
        (Objective.QUALITY, Weights(0.05, 0.05, 0.9)),
        (Objective.AUTO, Weights(0.35, 0.15, 0.5)),
    ],
)
def test_weights_table(objective: Objective, expected: Weights) -> None:
    assert WEIGHTS[objective] == expected


def test_every_weight_row_sums_to_one() -> None:
    for w in WEIGHTS.values():
        assert w.cost + w.speed + w.quality == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("cost", "cheapest_paid", "expected"),
    [
        (0, 100, 1.0),  # free is the top of the scale
        (0, 0, 1.0),
        (100, 100, 0.9),  # the cheapest paid model sits just below it, not at 0
        (1_000, 100, 0.45),  # each tenfold price step costs the same on the scale
        (10_000, 100, 0.0),  # two decades above: the bottom
        (1_000_000, 100, 0.0),
        (300, 100, 0.9 * (1 - 0.4771212547 / 2)),
        (50, 100, 0.9),  # cheaper than the reference (it is the reference's own floor)
        (500, 0, 0.9),  # no paid reference: the model is its own
    ],
)
def test_normalised_cost_on_a_log_scale(cost: int, cheapest_paid: int, expected: float) -> None:
    assert normalised_cost(cost, cheapest_paid) == pytest.approx(expected)


def test_a_free_model_no_longer_flattens_every_paid_one() -> None:
    # Free, cheap and expensive keep their order and their distance.
    free, cheap, dear = (normalised_cost(c, 1_000) for c in (0, 1_000, 10_000))
    assert free > cheap > dear > 0.0
    assert cheap - dear == pytest.approx(0.45)


@pytest.mark.parametrize(
    ("fill", "expected"),
    [(0.0, 0.0), (0.5, 0.0), (0.8, 0.0), (0.9, 0.15), (0.95, 0.225), (1.0, 0.3), (1.2, 0.3)],
)
def test_context_penalty(fill: float, expected: float) -> None:
    assert context_penalty(fill) == pytest.approx(expected)


BAL = WEIGHTS[Objective.BALANCED]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # cheapest paid, fastest, quality 0.8: 0.35 * 0.9 + 0.15 + 0.4
        ((100, 100, 50.0, 50.0, 0.8, 0.1), 0.865),
        # 10x the cost, half the speed: 0.35 * 0.45 + 0.075 + 0.4
        ((1_000, 100, 25.0, 50.0, 0.8, 0.1), 0.6325),
        # same, 90% of the window used: minus 0.15
        ((1_000, 100, 25.0, 50.0, 0.8, 0.9), 0.4825),
        # quality outside 0..1 is clamped; a free model takes the whole cost weight
        ((0, 100, 50.0, 50.0, 1.7, 0.0), 1.0),
        ((0, 100, 50.0, 50.0, -1.0, 0.0), 0.5),
        # rounded to 4 decimals: 0.35 * 0.9 * (1 - log10(3) / 2) + 0.15 + 0.5 * 0.7
        ((300, 100, 50.0, 50.0, 0.7, 0.0), 0.7399),
    ],
)
def test_score(args: tuple[int, int, float, float, float, float], expected: float) -> None:
    cost, min_cost, tps, max_tps, quality, fill = args
    assert score(cost, min_cost, tps, max_tps, quality, fill, BAL) == expected


def test_score_zero_speed_set_does_not_divide_by_zero() -> None:
    assert score(0, 100, 0.0, 0.0, 0.5, 0.0, BAL) == 0.75


@pytest.mark.parametrize(
    ("ranked", "size", "chain"),
    [
        (["a:1", "a:2", "b:1", "c:1"], 2, [("b:1", True), ("c:1", True)]),
        (["a:1", "a:2", "b:1", "c:1"], 3, [("b:1", True), ("c:1", True), ("a:2", False)]),
        (["a:1", "a:2", "b:1", "b:2"], 3, [("b:1", True), ("a:2", False), ("b:2", False)]),
        (["a:1", "a:2"], 0, []),
        (["a:1"], 2, []),
        ([], 2, []),
    ],
)
def test_fallback_chain(ranked: list[str], size: int, chain: list[tuple[str, bool]]) -> None:
    assert fallback_chain(ranked, lambda s: s.split(":")[0], size) == chain
