"""The headline's per-round spread: ratios paired round by round."""

from __future__ import annotations

from bench.latency.headline import per_round


def test_the_spread_pairs_round_i_of_one_with_round_i_of_the_other() -> None:
    # Paired by index, not sorted first: 10/5 and 9/6 -> 1.50-2.00, not 9/5 and 10/6.
    assert per_round([10.0, 9.0], [5.0, 6.0]) == "; per round 1.50-2.00x"


def test_one_round_or_none_gives_no_spread() -> None:
    assert per_round([10.0], [5.0]) == ""
    assert per_round([], []) == ""


def test_a_round_with_nothing_to_divide_by_is_left_out() -> None:
    assert per_round([3.0, 4.0, 5.0], [2.0, 0.0, 2.0]) == "; per round 1.50-2.50x"
    assert per_round([3.0, 4.0], [2.0, 0.0]) == ""
