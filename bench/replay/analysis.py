"""Turn replay runs into figures: per sweep (bar, value) the RouteLLM pair, the RouterBench
curve, the cost saved at 95% of always-gemini's quality and convergence; plus the oracles."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.replay import metrics as rm
from bench.replay import oracles
from bench.replay.data import MODELS, SHORT, STRONG, WEAK, Row
from bench.replay.metrics import PairCurve, Point, Summary
from bench.replay.run import Knob, RunResult

THREE, TWO = "replay", "weak_strong"  # the policies in config/replay.yaml
QUALITY_SHARE = 0.95  # "at >= 95% of always-gemini's quality"
WINDOW = 100
STABLE_TOLERANCE = 0.05


@dataclass(frozen=True)
class PointFigures:
    """One run (one policy at one sweep point): what it did and what it scored."""

    run: RunResult
    summary: Summary
    late: Point  # mean quality and cost over the second half of the stream
    explored: float  # share of decisions whose chosen model was explored
    pgr: float | None  # weak/strong runs only

    @property
    def level(self) -> float:
        return self.run.spec.level

    @property
    def strong_share(self) -> float:
        return self.summary.shares.get(STRONG, 0.0)


@dataclass(frozen=True)
class Convergence:
    """How one run's routing settled: windows of WINDOW prompts, and per task type."""

    level: float
    windows: list[rm.Window]
    window_explored: list[float]
    stable_from: int | None
    settled: dict[str, int]
    final: dict[str, rm.Choice]


@dataclass(frozen=True)
class SweepFigures:
    """Every figure of one knob's sweep, over both policies."""

    knob: Knob
    three: dict[float, PointFigures]
    two: dict[float, PointFigures]
    pair: PairCurve | None  # RouteLLM over the weak_strong runs; refusals count as failures
    aiq: tuple[float, float] | None  # (linear, log cost) of the three-model runs
    hull: list[Point]
    # Cheapest three-model point reaching 95% of always-gemini's quality; the same counting
    # only points that also hold it over the 2nd half (what the val tuning picks).
    reach: tuple[float, Point] | None
    reach_steady: tuple[float, Point] | None
    tuned: float | None  # the level tuned on val, when the sweep has it
    convergence: Convergence | None

    @property
    def refusals(self) -> int:
        """Prompts not routed, over every run of the sweep."""
        return sum(f.summary.not_routed for f in (*self.three.values(), *self.two.values()))


@dataclass(frozen=True)
class References:
    """What the runs are read against: single models, hindsight oracles, the random mix."""

    singles: dict[str, Point]
    prompt_oracle: Point
    gap_order: list[tuple[str, float]]  # (source, gemini - llama mean reward), largest first
    gap_points: list[tuple[float, float]]  # the gap-ordered oracle's (share, PGR) per step
    pairs: dict[str, PairCurve]  # RouteLLM figures of each reference
    aiq: dict[str, tuple[float, float]]  # three-model references: (linear, log cost)
    type_oracle_reach: Point | None  # cheapest lambda-oracle point at 95% of gemini

    @property
    def cost_range(self) -> tuple[float, float]:
        costs = [p.cost for p in self.singles.values()]
        return min(costs), max(costs)

    @property
    def target(self) -> float:
        """The quality mark: 95% of always-gemini's."""
        return QUALITY_SHARE * self.singles[STRONG].quality


GAP_ORACLE = "per-task-type oracle, gap-ordered"
LAMBDA_ORACLE = "per-task-type oracle, lambda sweep"
PROMPT_ORACLE = "per-prompt oracle"
RANDOM = "random mix"
ZERO_ROUTER = "zero router (mixing single models)"


@dataclass
class Analysis:
    """Every figure of one replay of one file."""

    file: str
    prompts: int
    runs: list[RunResult]
    refs: References
    sweeps: dict[Knob, SweepFigures] = field(default_factory=dict)
    sources: Counter[str] = field(default_factory=Counter)


def references(rows: Sequence[Row]) -> References:
    """Single models, the oracles and the random mix, on `rows` in hindsight."""
    singles = rm.single_points(rows, MODELS)
    lams = oracles.lambdas()
    pair = (WEAK, STRONG)

    def pair_curve(choices: Sequence[Sequence[rm.Choice]]) -> PairCurve:
        return PairCurve.of(rm.pair_point(rows, c, WEAK, STRONG) for c in choices)

    gap_points = [rm.pair_point(rows, c, WEAK, STRONG)
                  for c in oracles.gap_oracle_choices(rows, WEAK, STRONG)]
    pairs = {
        GAP_ORACLE: PairCurve.of(gap_points),
        LAMBDA_ORACLE: pair_curve(oracles.type_oracle_choices(rows, lams, pair)),
        PROMPT_ORACLE: pair_curve(oracles.prompt_oracle_choices(rows, lams, pair)),
        RANDOM: rm.RANDOM_MIX,
    }
    type_points = oracles.type_oracle_points(rows, lams)
    curves: dict[str, list[Point]] = {
        ZERO_ROUTER: list(singles.values()),
        **{f"always {SHORT[m]}": [p] for m, p in singles.items()},
        LAMBDA_ORACLE: type_points,
        PROMPT_ORACLE: oracles.prompt_oracle_points(rows, lams),
    }
    lo, hi = min(p.cost for p in singles.values()), max(p.cost for p in singles.values())
    target = QUALITY_SHARE * singles[STRONG].quality
    reach = rm.cheapest_reaching(dict(enumerate(type_points)), target)
    return References(
        singles, oracles.prompt_oracle(rows), oracles.gap_order(rows, WEAK, STRONG), gap_points,
        pairs, {n: (rm.aiq(p, lo, hi), rm.aiq_log(p, lo, hi)) for n, p in curves.items()},
        reach[1] if reach else None)


def point_figures(rows: Sequence[Row], run: RunResult) -> PointFigures:
    """A run's summary, its second half, its explored share and (weak/strong) its PGR."""
    half = len(rows) // 2
    pgr = None
    if run.spec.policy == TWO:
        pgr = rm.pair_point(rows, run.choices, WEAK, STRONG)[1]
    return PointFigures(run, rm.summarize(rows, run.choices),
                        rm.point_of(rows[half:], run.choices[half:]),
                        statistics.fmean(run.explored) if run.explored else 0.0, pgr)


def convergence(rows: Sequence[Row], run: RunResult) -> Convergence:
    """Windows of WINDOW prompts and per-task-type settling of one run."""
    wins = rm.windows(rows, run.choices, WINDOW)
    return Convergence(
        run.spec.level, wins,
        [statistics.fmean(run.explored[w.start:w.start + WINDOW]) for w in wins],
        rm.stable_from(wins, STABLE_TOLERANCE),
        rm.settled_after(rows, run.choices, run.explored),
        rm.final_choices(rows, run.choices, run.explored))


def sweep(rows: Sequence[Row], runs: Sequence[RunResult], knob: Knob, refs: References,
          tuned: float | None) -> SweepFigures:
    """Every figure of one knob's runs."""
    mine = [r for r in runs if r.spec.knob is knob]
    three = {r.spec.level: point_figures(rows, r) for r in mine if r.spec.policy == THREE}
    two = {r.spec.level: point_figures(rows, r) for r in mine if r.spec.policy == TWO}
    pair = PairCurve.of((f.strong_share, f.pgr) for f in two.values()
                        if f.pgr is not None) if two else None
    points = {lvl: f.summary.point for lvl, f in three.items()}
    lo, hi = refs.cost_range
    aiq = (rm.aiq(points.values(), lo, hi), rm.aiq_log(points.values(), lo, hi)) if three \
        else None
    steady = {lvl: p for lvl, p in points.items() if three[lvl].late.quality >= refs.target}
    tuned = tuned if tuned in three else None
    conv = convergence(rows, three[tuned].run) if tuned is not None else None
    return SweepFigures(knob, three, two, pair, aiq, rm.upper_hull(points.values()),
                        rm.cheapest_reaching(points, refs.target),
                        rm.cheapest_reaching(steady, refs.target), tuned, conv)


def analyse(file: str, rows: Sequence[Row], runs: Sequence[RunResult],
            tuned: Mapping[Knob, float]) -> Analysis:
    """Compute every figure from the runs and the data."""
    refs = references(rows)
    a = Analysis(file, len(rows), list(runs), refs, sources=Counter(r.source for r in rows))
    for knob in Knob:
        if any(r.spec.knob is knob for r in runs):
            a.sweeps[knob] = sweep(rows, runs, knob, refs, tuned.get(knob))
    return a
