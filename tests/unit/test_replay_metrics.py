"""Replay benchmark figures on toy data: PGR/APGR/CPT, hull and AIQ, oracles, convergence,
run naming and requests, and a whole analysis of hand-made runs."""

from __future__ import annotations

import pytest

from bench.replay.analysis import analyse
from bench.replay.data import Price, Row, fit_price, implied_output_tokens
from bench.replay.metrics import (
    NONE,
    RANDOM_MIX,
    PairCurve,
    Point,
    aiq,
    aiq_log,
    apgr,
    cheapest_reaching,
    cpt,
    final_choices,
    hull_quality,
    pair_point,
    pgr,
    pgr_curve,
    saving,
    settled_after,
    stable_from,
    summarize,
    upper_hull,
    windows,
)
from bench.replay.oracles import (
    gap_oracle_choices,
    gap_order,
    prompt_oracle,
    type_oracle_choices,
    type_oracle_points,
)
from bench.replay.report import markdown
from bench.replay.run import Knob, RunResult, RunSpec, route_request


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


# --- the weak/strong pair: gap-ordered oracle, refusals, the random mix ----------------------

# Two prompts of "a" where the strong model gains 0.7, one of "b" (+0.1), one of "c" (-0.1).
# Always weak: 0.5, always strong: 0.85, so PGR = (quality - 0.5) / 0.35.
GAP_ROWS = [row("a", 0.2, 1.0), row("b", 0.5, 0.6), row("c", 0.9, 0.8), row("a", 0.4, 1.0)]


def test_gap_order_sorts_sources_by_what_the_strong_model_gains() -> None:
    assert [(s, round(g, 6)) for s, g in gap_order(GAP_ROWS, "w", "s")] == [
        ("a", 0.7), ("b", 0.1), ("c", -0.1)]
    tied = [row("z", 0.5, 0.7), row("y", 0.1, 0.3)]
    assert [s for s, _ in gap_order(tied, "w", "s")] == ["y", "z"]  # equal gaps: by name


def test_gap_oracle_switches_one_source_at_a_time() -> None:
    steps = gap_oracle_choices(GAP_ROWS, "w", "s")
    assert steps == [["w", "w", "w", "w"], ["s", "w", "w", "s"], ["s", "s", "w", "s"],
                     ["s", "s", "s", "s"]]
    points = [pair_point(GAP_ROWS, c, "w", "s") for c in steps]
    assert [x for p in points for x in p] == pytest.approx(
        [0.0, 0.0, 0.5, 1.0, 0.75, 0.375 / 0.35, 1.0, 1.0])
    curve = PairCurve.of(points)
    # Trapezoids: 0.5 x (0 + 1) / 2, then twice 0.25 x (1 + 1.0714) / 2.
    assert curve.apgr == pytest.approx(0.25 + 2 * 0.25 * (1 + 0.375 / 0.35) / 2)
    assert curve.cpt50 == pytest.approx(0.25)
    assert curve.cpt80 == pytest.approx(0.4)


def test_a_refusal_scores_zero_not_the_weak_model() -> None:
    routed = pair_point(GAP_ROWS, ["s", "w", "w", "w"], "w", "s")
    refused = pair_point(GAP_ROWS, ["s", None, "w", "w"], "w", "s")
    assert routed == pytest.approx((0.25, (0.7 - 0.5) / 0.35))
    assert refused == pytest.approx((0.25, (0.575 - 0.5) / 0.35))  # 1.0 + 0 + 0.9 + 0.4
    assert PairCurve.of([refused]).apgr < PairCurve.of([routed]).apgr


def test_random_mix_is_the_diagonal() -> None:
    assert (RANDOM_MIX.apgr, RANDOM_MIX.cpt50, RANDOM_MIX.cpt80) == pytest.approx((0.5, 0.5, 0.8))
    assert RANDOM_MIX.at(0.3) == pytest.approx(0.3)


def test_a_curve_read_at_a_share_interpolates_between_its_points() -> None:
    curve = PairCurve.of([(0.5, 1.0), (0.75, 1.2)])
    assert curve.at(0.25) == pytest.approx(0.5)
    assert curve.at(0.6) == pytest.approx(1.08)
    assert curve.at(1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="outside"):
        curve.at(1.5)


def test_lambda_oracle_restricted_to_the_pair() -> None:
    rows = [Row("a", 10, {"w": 0.5, "m": 0.9, "s": 1.0}, {"w": 1.0, "m": 2.0, "s": 10.0})]
    assert type_oracle_choices(rows, [0.0, 1e9], ("w", "s")) == [["s"], ["w"]]
    assert type_oracle_choices(rows, [0.05]) == [["m"]]  # 0.9 - 0.1 beats 1.0 - 0.5, 0.5 - 0.05


# --- runs: naming, requests, outcomes --------------------------------------------------------

def test_value_runs_are_named_by_micro_usd_and_bar_runs_by_bar() -> None:
    value = RunSpec.at("weak_strong", Knob.VALUE, 0.15)
    assert (value.name, value.value_micros, value.bar, value.knob) == (
        "weak_strong-v150000", 150_000, None, Knob.VALUE)
    assert value.level == pytest.approx(0.15)
    bar = RunSpec.at("replay", Knob.BAR, 0.725)
    assert (bar.name, bar.knob, bar.level) == ("replay-q0.725", Knob.BAR, 0.725)
    assert RunSpec.at("replay", Knob.VALUE, 0.0).name == "replay-v0"
    with pytest.raises(ValueError, match="exactly one"):
        RunSpec("replay")
    with pytest.raises(ValueError, match="exactly one"):
        RunSpec("replay", bar=0.7, value_micros=1)


def test_a_value_run_sends_a_value_and_no_floor() -> None:
    r = row("gsm8k", 0.5, 0.9)
    value = route_request(3, r, RunSpec.at("weak_strong", Knob.VALUE, 0.2))
    assert value.HasField("value_micros") and value.value_micros == 200_000
    assert not value.requires.HasField("min_quality")
    bar = route_request(3, r, RunSpec.at("replay", Knob.BAR, 0.0))
    assert bar.requires.HasField("min_quality") and bar.requires.min_quality == 0.0
    assert not bar.HasField("value_micros")
    assert (bar.task_type, bar.task_id) == ("gsm8k", "replay-q0.000-3")


def test_implied_output_tokens_explain_the_recorded_cost() -> None:
    price = Price(input_per_mtok=2.0, output_per_mtok=10.0)
    tokens = implied_output_tokens(price, 100, 0.0012)  # $0.0002 of input, $0.001 of output
    assert tokens == 100
    assert implied_output_tokens(price, 100, 0.0001) == 0  # below the input's own cost
    assert implied_output_tokens(Price(0.0, 0.0), 100, 0.5) == 0
    # Rounded up: the tokens at catalog price never undershoot the cost.
    assert implied_output_tokens(price, 0, 0.000015) == 2


# --- a whole analysis on hand-made runs -------------------------------------------------------

L, M, G = "llama-3.1-8b", "mistral-large-2512", "gemini-2.5-pro"


def three_row(source: str, llama: float, mistral: float, gemini: float) -> Row:
    return Row(source, 10, {L: llama, M: mistral, G: gemini}, {L: 0.001, M: 0.01, G: 1.0})


def result(spec: RunSpec, choices: list[str | None]) -> RunResult:
    return RunResult(spec, tuple(choices), (False,) * len(choices), 0, len(choices), 0, 1.0)


def test_analysis_counts_refusals_as_failures_and_finds_the_cheapest_point() -> None:
    rows = [three_row("a", 0.2, 0.95, 1.0), three_row("b", 0.8, 0.9, 0.9)]
    value = RunSpec.at("weak_strong", Knob.VALUE, 1.0)
    runs = [result(RunSpec.at("replay", Knob.BAR, 0.0), [L, L]),
            result(RunSpec.at("replay", Knob.BAR, 0.9), [M, M]),
            result(RunSpec.at("replay", Knob.BAR, 0.95), [G, G]),
            result(RunSpec.at("weak_strong", Knob.BAR, 0.9), [G, L]),
            result(value, [None, L])]
    a = analyse("toy", rows, runs, {Knob.BAR: 0.9})
    bar, val = a.sweeps[Knob.BAR], a.sweeps[Knob.VALUE]
    assert a.refs.singles[G] == Point(1.0, 0.95)
    # Mistral's 0.925 is >= 95% of gemini's 0.95, at 1% of its cost: the cheapest reaching it.
    assert bar.reach == (0.9, Point(0.01, 0.925))
    assert bar.tuned == 0.9 and bar.convergence is not None
    assert (bar.refusals, val.refusals) == (0, 1)
    # Weak 0.5, strong 0.95: [G, L] scores (1.0 + 0.8) / 2 = 0.9, PGR 0.4 / 0.45 ...
    assert bar.pair is not None and list(bar.pair.points[0]) == pytest.approx([0.5, 0.4 / 0.45])
    # ... a refusal of prompt 0 scores 0, below always-llama: PGR (0.4 - 0.5) / 0.45.
    assert val.pair is not None and list(val.pair.points[0]) == pytest.approx([0.0, -0.1 / 0.45])
    assert val.three == {} and val.aiq is None and val.reach is None
    assert bar.hull == [Point(0.001, 0.5), Point(0.01, 0.925), Point(1.0, 0.95)]
    md = markdown(a, {"Command": "test"})
    assert "#### Targets of the issue" in md
    assert "| value sweep (value_micros) | no refusals | 1 | MISSED |" in md
