"""Routing-quality figures of a replay, as pure functions over per-prompt choices.

RouteLLM (two models): PGR, APGR and CPT(x%). RouterBench (many models): the non-decreasing
convex hull of cost/quality points and its area, AIQ. Plus the cost saved against one reference
model at a quality level, and how fast the routing settles. The hindsight oracles are in
bench/replay/oracles.py.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from bench.replay.data import Row

Choice = str | None  # the model a prompt went to; None when the decision was not ROUTED
NONE = "(not routed)"


@dataclass(frozen=True)
class Point:
    """Mean cost (USD per prompt) and mean quality (reward) of a way of routing."""

    cost: float
    quality: float


@dataclass(frozen=True)
class Summary:
    """A run's mean quality and cost per prompt, share of prompts per model, failures."""

    point: Point
    shares: Mapping[str, float]
    not_routed: int


# --- per-run summaries ---------------------------------------------------------------------

def reward_of(row: Row, choice: Choice) -> float:
    """The chosen model's reward; a prompt that was not routed scores 0."""
    return 0.0 if choice is None else row.reward[choice]


def cost_of(row: Row, choice: Choice) -> float:
    """The chosen model's recorded cost; a prompt that was not routed costs nothing."""
    return 0.0 if choice is None else row.cost[choice]


def point_of(rows: Sequence[Row], choices: Sequence[Choice]) -> Point:
    """Mean cost and quality of routing `rows` as `choices` says."""
    pairs = list(zip(rows, choices, strict=True))
    return Point(statistics.fmean(cost_of(r, c) for r, c in pairs),
                 statistics.fmean(reward_of(r, c) for r, c in pairs))


def shares(choices: Sequence[Choice]) -> dict[str, float]:
    """Fraction of prompts per model (NONE for those not routed)."""
    counts = Counter(NONE if c is None else c for c in choices)
    return {m: n / len(choices) for m, n in counts.items()}


def summarize(rows: Sequence[Row], choices: Sequence[Choice]) -> Summary:
    """Point, shares and the number of prompts not routed."""
    return Summary(point_of(rows, choices), shares(choices), sum(c is None for c in choices))


def single_points(rows: Sequence[Row], models: Iterable[str]) -> dict[str, Point]:
    """Each model always chosen."""
    return {m: point_of(rows, [m] * len(rows)) for m in models}


# --- RouteLLM: PGR, APGR, CPT ---------------------------------------------------------------

def pgr(quality: float, weak: float, strong: float) -> float:
    """Performance gap recovered: 0 at the weak model's quality, 1 at the strong model's."""
    return (quality - weak) / (strong - weak)


def pgr_curve(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """(share of calls to strong, PGR) sorted by share, with (0, 0) and (1, 1) added.

    At equal shares the best PGR is kept: it is the operating point a deployer would pick.
    """
    best: dict[float, float] = {0.0: 0.0, 1.0: 1.0}
    for x, y in points:
        best[x] = max(y, best.get(x, -math.inf))
    return sorted(best.items())


def apgr(curve: Sequence[tuple[float, float]]) -> float:
    """Average PGR over the strong share 0..1: trapezoids over a pgr_curve."""
    return sum((x1 - x0) * (y0 + y1) / 2
               for (x0, y0), (x1, y1) in itertools.pairwise(curve))


def cpt(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """Smallest share of calls to strong at which the curve reaches PGR `target`.

    Linear between points; None if it never does.
    """
    x_prev, y_prev = curve[0]
    if y_prev >= target:
        return x_prev
    for x, y in curve[1:]:
        if y >= target:
            return x_prev + (target - y_prev) / (y - y_prev) * (x - x_prev)
        x_prev, y_prev = x, y
    return None


def pgr_at(curve: Sequence[tuple[float, float]], share: float) -> float:
    """PGR of a pgr_curve at a share of calls to strong, linear between its points."""
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        if x0 <= share <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (share - x0) / (x1 - x0)
    raise ValueError(f"share {share} outside the curve's {curve[0][0]}..{curve[-1][0]}")


@dataclass(frozen=True)
class PairCurve:
    """RouteLLM figures of one way of routing the weak/strong pair, from its (share, PGR) points.

    A prompt that was not routed scores quality 0 (point_of), so refusals count as failures.
    """

    points: tuple[tuple[float, float], ...]
    curve: tuple[tuple[float, float], ...]  # pgr_curve of the points
    apgr: float
    cpt50: float | None
    cpt80: float | None

    @classmethod
    def of(cls, points: Iterable[tuple[float, float]]) -> PairCurve:
        """APGR and CPT(50%) / CPT(80%) of the points, with (0, 0) and (1, 1) added."""
        pts = tuple(points)
        curve = pgr_curve(pts)
        return cls(pts, tuple(curve), apgr(curve), cpt(curve, 0.5), cpt(curve, 0.8))

    def at(self, share: float) -> float:
        """The curve's PGR at `share` of calls to strong."""
        return pgr_at(self.curve, share)


# Mixing the two models at random: the straight line from (0, 0) to (1, 1).
RANDOM_MIX = PairCurve.of(())


def pair_point(rows: Sequence[Row], choices: Sequence[Choice], weak: str,
               strong: str) -> tuple[float, float]:
    """(share of prompts sent to `strong`, PGR) of one way of routing the rows."""
    q_weak = point_of(rows, [weak] * len(rows)).quality
    q_strong = point_of(rows, [strong] * len(rows)).quality
    share = sum(c == strong for c in choices) / len(choices)
    return share, pgr(point_of(rows, choices).quality, q_weak, q_strong)


# --- RouterBench: non-decreasing convex hull, AIQ -------------------------------------------

def _cross(o: Point, a: Point, b: Point) -> float:
    return (a.cost - o.cost) * (b.quality - o.quality) - (a.quality - o.quality) * (b.cost - o.cost)


def upper_hull(points: Iterable[Point]) -> list[Point]:
    """Non-decreasing convex hull: the upper hull from the cheapest point to the best one.

    Every point on it is reachable by mixing two routed operating points at random.
    """
    by_cost: dict[float, float] = {}
    for p in points:
        by_cost[p.cost] = max(p.quality, by_cost.get(p.cost, -math.inf))
    hull: list[Point] = []
    for p in (Point(c, q) for c, q in sorted(by_cost.items())):
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
            hull.pop()
        hull.append(p)
    if not hull:
        return hull
    top = max(range(len(hull)), key=lambda i: (hull[i].quality, -i))
    return hull[: top + 1]


def hull_quality(hull: Sequence[Point], cost: float) -> float:
    """Quality the hull reaches at `cost`: 0 below its cheapest point, flat after its best."""
    if not hull or cost < hull[0].cost:
        return 0.0
    for a, b in itertools.pairwise(hull):
        if cost <= b.cost:
            return a.quality + (b.quality - a.quality) * (cost - a.cost) / (b.cost - a.cost)
    return hull[-1].quality


def _midpoint_area(f: Callable[[float], float], xs: Sequence[float]) -> float:
    """Midpoint rule over the intervals of `xs` (exact where f is linear on each interval)."""
    return sum((b - a) * f((a + b) / 2) for a, b in itertools.pairwise(xs))


def aiq(points: Iterable[Point], lo: float, hi: float) -> float:
    """RouterBench's AIQ: area under the hull over cost [lo, hi], divided by hi - lo."""
    hull = upper_hull(points)
    xs = sorted({lo, hi, *(p.cost for p in hull if lo < p.cost < hi)})
    return _midpoint_area(lambda c: hull_quality(hull, c), xs) / (hi - lo)


def aiq_log(points: Iterable[Point], lo: float, hi: float, steps: int = 2000) -> float:
    """AIQ with cost on a log scale: the same hull, averaged over log10(cost) in [lo, hi]."""
    hull = upper_hull(points)
    a, b = math.log10(lo), math.log10(hi)
    xs = [a + (b - a) * i / steps for i in range(steps + 1)]
    return _midpoint_area(lambda x: hull_quality(hull, 10**x), xs) / (b - a)


# --- cost saved at a quality level ----------------------------------------------------------

def cheapest_reaching(points: Mapping[float, Point], quality: float) -> tuple[float, Point] | None:
    """The (key, point) with the lowest cost among those reaching `quality`, if any."""
    ok = [(k, p) for k, p in points.items() if p.quality >= quality]
    return min(ok, key=lambda kp: (kp[1].cost, kp[0])) if ok else None


def saving(point: Point, reference: Point) -> float:
    """Share of the reference's cost that `point` saves."""
    return 1.0 - point.cost / reference.cost


# --- convergence ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """Prompts [start, start + size): their mean quality and cost and shares per model."""

    start: int
    point: Point
    shares: Mapping[str, float]


def windows(rows: Sequence[Row], choices: Sequence[Choice], size: int = 100) -> list[Window]:
    """Consecutive non-overlapping windows of `size` prompts; a shorter tail is left out."""
    return [Window(i, point_of(rows[i:i + size], choices[i:i + size]),
                   shares(choices[i:i + size])) for i in range(0, len(rows) - size + 1, size)]


def stable_from(wins: Sequence[Window], tolerance: float = 0.05) -> int | None:
    """Index of the first window after which no model's share moves by `tolerance` or more
    from one window to the next; None if the last two windows still differ that much."""
    def moved(a: Window, b: Window) -> bool:
        return any(abs(a.shares.get(m, 0.0) - b.shares.get(m, 0.0)) >= tolerance
                   for m in {*a.shares, *b.shares})

    last_move = max((i for i in range(1, len(wins)) if moved(wins[i - 1], wins[i])), default=0)
    return None if last_move == len(wins) - 1 else last_move


def settled_after(rows: Sequence[Row], choices: Sequence[Choice],
                  explored: Sequence[bool] | None = None) -> dict[str, int]:
    """Per source: how many of its prompts came before its choice last changed.

    Prompts flagged in `explored` (a model tried by exploration) count as prompts but neither
    make nor mark a change. 0 means the source went one way from its first prompt on.
    """
    flags = explored if explored is not None else [False] * len(rows)
    seen: Counter[str] = Counter()
    last: dict[str, Choice] = {}
    settled: dict[str, int] = {}
    for r, c, tried in zip(rows, choices, flags, strict=True):
        s = r.source
        settled.setdefault(s, 0)
        if not tried:
            if s in last and last[s] != c:
                settled[s] = seen[s]
            last[s] = c
        seen[s] += 1
    return settled


def final_choices(rows: Sequence[Row], choices: Sequence[Choice],
                  explored: Sequence[bool] | None = None) -> dict[str, Choice]:
    """Per source: its last choice that was not made by exploration."""
    flags = explored if explored is not None else [False] * len(rows)
    last: dict[str, Choice] = {}
    for r, c, tried in zip(rows, choices, flags, strict=True):
        if not tried or r.source not in last:
            last[r.source] = c
    return last
