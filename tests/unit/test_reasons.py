"""Sentences remembered by what they quote read exactly as sentences made afresh."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing_sidecar.core import reasons

FIGURES = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e-9])
NETS = st.integers(-(10**12), 10**12)


def routed(score: float) -> str:
    return reasons.routed(reasons.Routed("m", "p", 1, "fix_bug", "code", "balanced", score,
                                         1200), 1, 0)


def fresh(make: Callable[[], str]) -> str:
    """The sentence with nothing remembered."""
    reasons._MADE.clear()
    return make()


def makers(a: float, b: float, n: int, m: int) -> list[Callable[[], str]]:
    """Each remembered sentence, of these figures."""
    return [lambda: reasons.below(a, b), lambda: reasons.ties(a),
            lambda: reasons.net_against(n, m), lambda: routed(a)]


@settings(max_examples=300, deadline=None)
@given(FIGURES, FIGURES, NETS, NETS, FIGURES, FIGURES, NETS, NETS)
def test_a_remembered_sentence_is_the_one_made_afresh(
    a: float, b: float, n: int, m: int, c: float, d: float, k: int, j: int,
) -> None:
    """Two sets of figures made in turn, then again: each reads as made alone.

    One remembered under the other's key (0.0 and -0.0 are one) would read as the other's.
    """
    for first, second in zip(makers(a, b, n, m), makers(c, d, k, j), strict=True):
        alone = (fresh(first), fresh(second))
        reasons._MADE.clear()
        assert [first(), second(), first(), second()] == [*alone, *alone]


@pytest.mark.parametrize(("make", "zero", "negative_zero"), [
    (lambda x: reasons.below(x, 0.5), "score 0 below", "score -0 below"),
    (lambda x: reasons.below(0.5, x), "below chosen 0", "below chosen -0"),
    (lambda x: reasons.ties(x), "score 0 ties", "score -0 ties"),
    (routed, "best score 0 at", "best score -0 at"),
])
def test_zero_and_negative_zero_keep_their_own_texts(
    make: Callable[[float], str], zero: str, negative_zero: str,
) -> None:
    """0.0 and -0.0 are one dictionary key; each still reads as itself, in either order."""
    for first, second in ((0.0, -0.0), (-0.0, 0.0)):
        reasons._MADE.clear()
        made = [(x, make(x)) for x in (first, second)]
        for x, text in made:
            assert (negative_zero if math.copysign(1, x) < 0 else zero) in text


def test_what_is_remembered_stays_bounded() -> None:
    reasons._MADE.clear()
    for i in range(3 * reasons._MADE_MAX):
        reasons.below(1.0 + i, 2.0)
    assert 0 < len(reasons._MADE) <= reasons._MADE_MAX
    assert reasons.below(1.0, 2.0) == "score 1 below chosen 2"
