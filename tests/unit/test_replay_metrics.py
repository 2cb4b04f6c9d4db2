"""Replay benchmark figures on toy data: PGR/APGR/CPT, hull and AIQ, oracles, convergence."""

from __future__ import annotations

import pytest

from bench.replay_data import Row, fit_price
from bench.replay_metrics import (
    NONE,
    Point,
    aiq,
    aiq_log,
    apgr,
    cheapest_reaching,
    cpt,
    final_choices,
    hull_quality,
    pgr,
    pgr_curve,
    prompt_oracle,
    saving,
    settled_after,
    stable_from,
    summarize,
    type_oracle_points,
    upper_hull,
    windows,
)


def row(source: str, weak: float, strong: float) -> Row:
    return Row(source, 10, {"w": weak, "s": strong}, {"w": 1.0, "s": 10.0})


ROWS = [row("a", 1.0, 1.0), row("b", 0.0, 1.0), row("a", 0.5, 1.0), row("b", 0.0, 0.5)]


def test_summarize_counts_not_routed_as_zero_quality_and_cost() -> None:
    s = summarize(ROWS, ["w", "s", None, "s"])
    assert s.point == Point(cost=(1 + 10 + 0 + 10) / 4, quality=(1 + 1 + 0 + 0.5) / 4)
    assert s.shares == {"w": 0.25, "s": 0.5, NONE: 0.25}
    assert s.not_routed == 1


def test_pgr_is_zero_at_weak_and_one_at_strong() -> None:
    assert pgr(0.6, 0.6, 0.9) == 0
    assert pgr(0.9, 0.6, 0.9) == 1
    assert pgr(0.75, 0.6, 0.9) == pytest.approx(0.5)


def test_random_router_has_apgr_half_and_cpt_equal_to_target() -> None:
    curve = pgr_curve([(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)])
    assert apgr(curve) == pytest.approx(0.5)
    assert cpt(curve, 0.5) == pytest.approx(0.5)
    assert cpt(curve, 0.8) == pytest.approx(0.8)


def test_good_router_recovers_most_of_the_gap_with_few_strong_calls() -> None:
    curve = pgr_curve([(0.2, 0.8)])  # endpoints (0, 0) and (1, 1) are added
    assert curve == [(0.0, 0.0), (0.2, 0.8), (1.0, 1.0)]
    assert apgr(curve) == pytest.approx(0.2 * 0.4 + 0.8 * 0.9)
    assert cpt(curve, 0.5) == pytest.approx(0.125)
    assert cpt(curve, 0.9) == pytest.approx(0.6)


def test_pgr_curve_keeps_the_best_point_at_equal_share() -> None:
    assert pgr_curve([(0.0, -3.0), (0.5, 0.2), (0.5, 0.7)]) == [(0.0, 0.0), (0.5, 0.7),
                                                                 (1.0, 1.0)]


def test_upper_hull_drops_dominated_and_concave_points() -> None:
    pts = [Point(1, 0.5), Point(2, 0.6), Point(3, 0.9), Point(4, 0.8), Point(3, 0.1)]
    # (2, 0.6) lies below the chord from (1, 0.5) to (3, 0.9); after the best point it stops.
    assert upper_hull(pts) == [Point(1, 0.5), Point(3, 0.9)]


def test_hull_quality_is_zero_below_and_flat_above() -> None:
    hull = [Point(1, 0.5), Point(3, 0.9)]
    assert hull_quality(hull, 0.5) == 0
    assert hull_quality(hull, 2) == pytest.approx(0.7)
    assert hull_quality(hull, 10) == 0.9


def test_aiq_of_one_point_and_of_a_line() -> None:
    # One point at the cheap end: flat at its quality over the whole range.
    assert aiq([Point(1, 0.8)], 1, 5) == pytest.approx(0.8)
    # A point half way: 0 before it, its quality after.
    assert aiq([Point(3, 0.8)], 1, 5) == pytest.approx(0.4)
    # From (1, 0.5) up to (5, 0.9): the mean of a line.
    assert aiq([Point(1, 0.5), Point(5, 0.9)], 1, 5) == pytest.approx(0.7)
    assert aiq_log([Point(1, 0.8)], 1, 100) == pytest.approx(0.8)
    assert aiq_log([Point(10, 0.8)], 1, 100) == pytest.approx(0.4, abs=1e-3)


def test_type_oracle_picks_per_source_in_hindsight() -> None:
    free, costly = type_oracle_points(ROWS, [0.0, 1e9])
    # lam = 0: both sources go to s (a: 0.75 vs 1.0, b: 0 vs 0.75); a huge lam: both to w.
    assert free == Point(10.0, (1 + 1 + 1 + 0.5) / 4)
    assert costly == Point(1.0, (1 + 0 + 0.5 + 0) / 4)


def test_prompt_oracle_takes_the_best_and_the_cheapest_among_ties() -> None:
    # Prompt 0 ties at 1.0 and goes to the cheap model; the others need the strong one.
    assert prompt_oracle(ROWS) == Point((1 + 10 + 10 + 10) / 4, (1 + 1 + 1 + 0.5) / 4)


def test_cheapest_reaching_and_saving() -> None:
    pts = {0.7: Point(1, 0.80), 0.8: Point(2, 0.95), 0.9: Point(3, 0.99)}
    assert cheapest_reaching(pts, 0.9) == (0.8, Point(2, 0.95))
    assert cheapest_reaching(pts, 1.0) is None
    assert saving(Point(2, 0.95), Point(10, 1.0)) == pytest.approx(0.8)


def test_windows_and_stability() -> None:
    rows = [row("a", 1, 1)] * 6
    wins = windows(rows, ["s", "s", "w", "s", "w", "w", "w"][:6], size=2)
    assert [w.shares for w in wins] == [{"s": 1.0}, {"w": 0.5, "s": 0.5}, {"w": 1.0}]
    assert stable_from(wins) is None  # still moving in the last window
    wins = windows(rows, ["s", "s", "w", "w", "w", "w"], size=2)
    assert stable_from(wins) == 1


def test_settled_after_counts_prompts_before_the_last_switch() -> None:
    rows = [row("a", 1, 1), row("b", 1, 1), row("a", 1, 1), row("a", 1, 1), row("b", 1, 1)]
    assert settled_after(rows, ["s", "w", "w", "w", "w"]) == {"a": 1, "b": 0}


def test_fit_price_reproduces_the_mean_cost() -> None:
    price = fit_price([10, 20, 30], [2e-6, 4e-6, 6e-6], max_output=100)
    assert price.input_per_mtok == pytest.approx(0.2)
    assert price.output_per_mtok == pytest.approx(0.0, abs=1e-12)
    flat = fit_price([10, 20, 30], [6e-6, 4e-6, 2e-6], max_output=100)  # slope clipped to 0
    assert flat.input_per_mtok == 0
    assert flat.output_per_mtok == pytest.approx(4e-6 / 100 * 1e6)


def test_settled_after_ignores_explored_prompts() -> None:
    rows = [row("a", 1, 1)] * 5
    choices = ["s", "w", "s", "w", "s"]
    assert settled_after(rows, choices) == {"a": 4}
    assert settled_after(rows, choices, [False, True, False, True, False]) == {"a": 0}


def test_final_choices_skip_explored_prompts() -> None:
    rows = [row("a", 1, 1), row("b", 1, 1), row("a", 1, 1)]
    assert final_choices(rows, ["s", None, "w"], [False, False, True]) == {"a": "s", "b": None}
