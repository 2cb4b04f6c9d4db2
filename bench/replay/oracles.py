"""Hindsight oracles: how well a router that knew the outcomes in advance could do.

Each returns the choices it makes (one list per operating point), so the same oracle gives
three-model cost/quality points and weak/strong PGR points alike.

- per task type, gap-ordered (the RouteLLM pair): task types sorted by how much the strong
  model beats the weak one on them, switched to the strong model one at a time;
- per task type, by a price of quality lambda: each task type goes to the model with the best
  mean reward - lambda x mean cost;
- per prompt: each prompt's best reward - lambda x its cost.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from bench.replay.data import Row
from bench.replay.metrics import Choice, Point, point_of

Options = Mapping[str, tuple[float, float]]  # model -> (quality, cost)


def lambdas(low_exp: float = -1.0, high_exp: float = 7.0, per_decade: int = 20) -> list[float]:
    """Prices of quality in USD^-1 for the oracles' sweeps: 0, then log-spaced."""
    n = int((high_exp - low_exp) * per_decade)
    return [0.0] + [10 ** (low_exp + i / per_decade) for i in range(n + 1)]


def _best(options: Options, lam: float) -> str:
    """The model maximising quality - lam * cost; cheaper wins ties."""
    return max(options, key=lambda m: (options[m][0] - lam * options[m][1], -options[m][1]))


def _only(options: Options, models: Sequence[str] | None) -> Options:
    return options if models is None else {m: options[m] for m in models}


def type_means(rows: Sequence[Row]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per source, per model: (mean reward, mean cost) over the rows, in hindsight."""
    groups: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        groups[r.source].append(r)
    return {s: {m: (statistics.fmean(r.reward[m] for r in rs),
                    statistics.fmean(r.cost[m] for r in rs)) for m in rs[0].reward}
            for s, rs in groups.items()}


def type_oracle_choices(rows: Sequence[Row], lams: Iterable[float],
                        models: Sequence[str] | None = None) -> list[list[Choice]]:
    """Per-task-type oracle: at each lam, each source goes to its best of `models` (all)."""
    means = {s: _only(o, models) for s, o in type_means(rows).items()}
    out: list[list[Choice]] = []
    for lam in lams:
        pick = {s: _best(opts, lam) for s, opts in means.items()}
        out.append([pick[r.source] for r in rows])
    return out


def type_oracle_points(rows: Sequence[Row], lams: Iterable[float],
                       models: Sequence[str] | None = None) -> list[Point]:
    """The per-task-type lambda oracle's (cost, quality) points."""
    return [point_of(rows, c) for c in type_oracle_choices(rows, lams, models)]


def gap_order(rows: Sequence[Row], weak: str, strong: str) -> list[tuple[str, float]]:
    """Sources with the strong model's mean reward minus the weak one's, largest gap first.

    Equal gaps go in source-name order, so the order is the same on every run.
    """
    gaps = {s: o[strong][0] - o[weak][0] for s, o in type_means(rows).items()}
    return sorted(gaps.items(), key=lambda sg: (-sg[1], sg[0]))


def gap_oracle_choices(rows: Sequence[Row], weak: str, strong: str) -> list[list[Choice]]:
    """Per-task-type oracle, gap-ordered: step k sends the k sources of largest gap to strong.

    One operating point per step, k = 0 (all weak) to every source (all strong).
    """
    order = [s for s, _ in gap_order(rows, weak, strong)]
    out: list[list[Choice]] = []
    for k in range(len(order) + 1):
        switched = set(order[:k])
        out.append([strong if r.source in switched else weak for r in rows])
    return out


def _row_options(r: Row) -> dict[str, tuple[float, float]]:
    return {m: (r.reward[m], r.cost[m]) for m in r.reward}


def prompt_oracle(rows: Sequence[Row]) -> Point:
    """Per-prompt oracle: the best reward on each prompt, the cheapest model among ties."""
    return point_of(rows, [_best(_row_options(r), 0.0) for r in rows])


def prompt_oracle_choices(rows: Sequence[Row], lams: Iterable[float],
                          models: Sequence[str] | None = None) -> list[list[Choice]]:
    """Per-prompt oracle traded against cost: each prompt's best quality - lam * cost."""
    opts = [_only(_row_options(r), models) for r in rows]
    return [[_best(o, lam) for o in opts] for lam in lams]


def prompt_oracle_points(rows: Sequence[Row], lams: Iterable[float],
                         models: Sequence[str] | None = None) -> list[Point]:
    """The per-prompt oracle's (cost, quality) points."""
    return [point_of(rows, c) for c in prompt_oracle_choices(rows, lams, models)]
