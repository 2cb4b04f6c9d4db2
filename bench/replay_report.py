"""Turn replay runs into figures (RouteLLM, RouterBench, savings, convergence) and tables."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench import replay_metrics as rm
from bench.replay_data import MODELS, STRONG, WEAK, Row
from bench.replay_metrics import Point, Summary
from bench.replay_run import RunResult

THREE, TWO = "replay", "weak_strong"  # the policies in config/replay.yaml
QUALITY_SHARE = 0.95  # "at >= 95% of always-gemini's quality"
WINDOW = 100
STABLE_TOLERANCE = 0.05
SHORT = {"llama-3.1-8b": "llama", "mistral-large-2512": "mistral", "gemini-2.5-pro": "gemini",
         rm.NONE: "none"}


@dataclass
class Analysis:
    """Every figure of one replay of one file."""

    file: str
    prompts: int
    singles: dict[str, Point]
    three: dict[float, Summary]
    two: dict[float, Summary]
    runs: list[RunResult]
    headline_bar: float
    aiq: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (lin, log)
    prompt_oracle: Point | None = None
    pgr: dict[float, float] = field(default_factory=dict)
    apgr: float = 0.0
    cpt: dict[int, float | None] = field(default_factory=dict)
    # The same over the bars where every prompt was routed (RouteLLM's routers never refuse).
    apgr_routed: float = 0.0
    cpt_routed: dict[int, float | None] = field(default_factory=dict)
    reach: tuple[float, Point] | None = None
    # The same, counting only bars that also hold the mark over the 2nd half of the stream.
    reach_steady: tuple[float, Point] | None = None
    type_oracle_reach: Point | None = None
    windows: list[rm.Window] = field(default_factory=list)
    window_explored: list[float] = field(default_factory=list)
    # Per bar (three models): mean quality and cost over the second half of the stream.
    late: dict[float, Point] = field(default_factory=dict)
    stable_from: int | None = None
    settled: dict[str, int] = field(default_factory=dict)
    final: dict[str, rm.Choice] = field(default_factory=dict)
    sources: Counter[str] = field(default_factory=Counter)


def by_bar(rows: Sequence[Row], runs: Sequence[RunResult], policy: str) -> dict[float, Summary]:
    """Summaries of one policy's runs, keyed by quality bar."""
    return {r.spec.bar: rm.summarize(rows, r.choices) for r in runs if r.spec.policy == policy}


def analyse(file: str, rows: Sequence[Row], runs: Sequence[RunResult],
            headline_bar: float) -> Analysis:
    """Compute every figure from the runs and the data."""
    a = Analysis(file, len(rows), rm.single_points(rows, MODELS), by_bar(rows, runs, THREE),
                 by_bar(rows, runs, TWO), list(runs), headline_bar,
                 sources=Counter(r.source for r in rows))
    _three_model(a, rows)
    _two_model(a)
    _convergence(a, rows)
    return a


def _three_model(a: Analysis, rows: Sequence[Row]) -> None:
    costs = [p.cost for p in a.singles.values()]
    lo, hi = min(costs), max(costs)
    lams = rm.lambdas()
    curves: dict[str, list[Point]] = {
        "router (sweep of bars)": [s.point for s in a.three.values()],
        "zero router (mixing single models)": list(a.singles.values()),
        **{f"always {SHORT[m]}": [p] for m, p in a.singles.items()},
        "per-task-type hindsight oracle": rm.type_oracle_points(rows, lams),
        "per-prompt oracle": rm.prompt_oracle_points(rows, lams),
    }
    a.aiq = {name: (rm.aiq(pts, lo, hi), rm.aiq_log(pts, lo, hi)) for name, pts in curves.items()}
    a.prompt_oracle = rm.prompt_oracle(rows)
    half = len(rows) // 2
    a.late = {r.spec.bar: rm.point_of(rows[half:], r.choices[half:])
              for r in a.runs if r.spec.policy == THREE}
    target = QUALITY_SHARE * a.singles[STRONG].quality
    a.reach = rm.cheapest_reaching({b: s.point for b, s in a.three.items()}, target)
    a.reach_steady = rm.cheapest_reaching(
        {b: s.point for b, s in a.three.items() if a.late[b].quality >= target}, target)
    oracle = rm.cheapest_reaching(dict(enumerate(curves["per-task-type hindsight oracle"])),
                                  target)
    a.type_oracle_reach = oracle[1] if oracle else None


def _two_model(a: Analysis) -> None:
    if not a.two:
        return
    weak, strong = a.singles[WEAK].quality, a.singles[STRONG].quality
    a.pgr = {b: rm.pgr(s.point.quality, weak, strong) for b, s in a.two.items()}
    a.apgr, a.cpt = _routellm(a, a.two)
    a.apgr_routed, a.cpt_routed = _routellm(
        a, {b: s for b, s in a.two.items() if s.not_routed == 0})


def _routellm(a: Analysis, bars: Mapping[float, Summary]) -> tuple[float, dict[int, float | None]]:
    curve = rm.pgr_curve((bars[b].shares.get(STRONG, 0.0), a.pgr[b]) for b in bars)
    return rm.apgr(curve), {50: rm.cpt(curve, 0.5), 80: rm.cpt(curve, 0.8)}


def _convergence(a: Analysis, rows: Sequence[Row]) -> None:
    run = next((r for r in a.runs if r.spec.policy == THREE and r.spec.bar == a.headline_bar),
               None)
    if run is None:
        return
    a.windows = rm.windows(rows, run.choices, WINDOW)
    a.window_explored = [statistics.fmean(run.explored[w.start:w.start + WINDOW])
                         for w in a.windows]
    a.stable_from = rm.stable_from(a.windows, STABLE_TOLERANCE)
    a.settled = rm.settled_after(rows, run.choices, run.explored)
    a.final = rm.final_choices(rows, run.choices, run.explored)


# --- tables ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Table:
    """Headers and rows of strings, printable as text or as a Markdown table."""

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]

    def text(self) -> str:
        cols = list(zip(self.headers, *self.rows, strict=True))
        widths = [max(len(c) for c in col) for col in cols]
        lines = [self.headers, *self.rows]
        return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True))
                         for line in lines)

    def md(self) -> str:
        lines = [self.headers, ["---"] * len(self.headers), *self.rows]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def usd(x: float) -> str:
    return f"${x:.6f}"


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def share_cells(shares: Mapping[str, float]) -> list[str]:
    return [pct(shares.get(m, 0.0), 0) for m in (*MODELS, rm.NONE)]


def explored_by_run(a: Analysis, policy: str) -> dict[float, float]:
    return {r.spec.bar: statistics.fmean(r.explored) for r in a.runs if r.spec.policy == policy}


def singles_table(a: Analysis) -> Table:
    rows = [[m, f"{p.quality:.4f}", usd(p.cost)] for m, p in a.singles.items()]
    assert a.prompt_oracle is not None
    rows.append(["per-prompt oracle", f"{a.prompt_oracle.quality:.4f}",
                 usd(a.prompt_oracle.cost)])
    return Table(["always", "quality", "$/prompt"], rows)


def three_table(a: Analysis) -> Table:
    gem = a.singles[STRONG]
    tried = explored_by_run(a, THREE)
    rows = [[f"{b:.3f}", f"{s.point.quality:.4f}", usd(s.point.cost),
             *share_cells(s.shares)[:-1], str(s.not_routed), pct(tried[b], 0),
             f"{a.late[b].quality:.4f}", usd(a.late[b].cost),
             pct(s.point.quality / gem.quality), pct(rm.saving(s.point, gem))]
            for b, s in sorted(a.three.items())]
    heads = ["bar", "quality", "$/prompt", *(SHORT[m] for m in MODELS), "not routed",
             "explored", "quality 2nd half", "$/prompt 2nd half", "% of gemini q",
             "saved vs gemini"]
    return Table(heads, rows)


def aiq_table(a: Analysis) -> Table:
    return Table(["curve", "AIQ (linear cost)", "AIQ (log cost)"],
                 [[name, f"{lin:.4f}", f"{log:.4f}"] for name, (lin, log) in a.aiq.items()])


def two_table(a: Analysis) -> Table:
    rows = [[f"{b:.3f}", f"{s.point.quality:.4f}", usd(s.point.cost),
             pct(s.shares.get(STRONG, 0.0)), f"{a.pgr[b]:+.3f}", str(s.not_routed)]
            for b, s in sorted(a.two.items())]
    return Table(["bar", "quality", "$/prompt", "calls to gemini", "PGR", "not routed"], rows)


def windows_table(a: Analysis) -> Table:
    rows = [[f"{w.start}-{w.start + WINDOW - 1}", f"{w.point.quality:.4f}", usd(w.point.cost),
             *share_cells(w.shares), pct(x, 0)]
            for w, x in zip(a.windows, a.window_explored, strict=True)]
    return Table(["prompts", "quality", "$/prompt",
                  *(SHORT[m] for m in (*MODELS, rm.NONE)), "explored"], rows)


def settled_table(a: Analysis, min_prompts: int = 20) -> Table:
    rows = [[s, str(n), str(a.settled[s]), SHORT[a.final[s] or rm.NONE]]
            for s, n in a.sources.most_common() if n >= min_prompts]
    return Table(["task type", "prompts", "prompts before its routing last changed "
                  "(exploration aside)", "last routed to"], rows)


# --- headline sentences ---------------------------------------------------------------------

def headline(a: Analysis) -> list[str]:
    """The figures the issue asks for, one line each."""
    gem = a.singles[STRONG]
    lines = [f"RouteLLM (llama weak vs gemini strong): APGR {a.apgr:.3f}, "
             f"CPT(50%) {pct(a.cpt.get(50))}, CPT(80%) {pct(a.cpt.get(80))} of calls to gemini"
             f"; over the bars where every prompt was routed: APGR {a.apgr_routed:.3f}, "
             f"CPT(50%) {pct(a.cpt_routed.get(50))}, CPT(80%) {pct(a.cpt_routed.get(80))}"
             if a.two else "RouteLLM: two-model sweep not run"]
    lines.append(_aiq_line(a))
    lines.append(_saving_line(a, gem))
    lines.append(_convergence_line(a))
    return lines


def _aiq_line(a: Analysis) -> str:
    def pair(name: str) -> str:
        lin, log = a.aiq[name]
        return f"{lin:.4f} / {log:.4f}"

    best = max((k for k in a.aiq if k.startswith("always ")), key=lambda k: a.aiq[k])
    return (f"RouterBench AIQ (linear / log cost): router {pair('router (sweep of bars)')}; "
            f"best single model by linear AIQ ({best}) {pair(best)}; zero router "
            f"{pair('zero router (mixing single models)')}; per-task-type oracle "
            f"{pair('per-task-type hindsight oracle')}; per-prompt oracle "
            f"{pair('per-prompt oracle')}")


def _saving_line(a: Analysis, gem: Point) -> str:
    target = QUALITY_SHARE * gem.quality
    head = f"Cost saved vs always-gemini at >= 95% of its quality (>= {target:.4f}): "
    if a.reach is None:
        out = head + "no bar reaches it"
    else:
        bar, p = a.reach
        out = (head + f"{pct(rm.saving(p, gem))} at bar {bar:.3f} (quality {p.quality:.4f}, "
               f"{usd(p.cost)} vs {usd(gem.cost)})")
    tuned = a.three.get(a.headline_bar)
    if tuned is not None:
        ok = "reaches" if tuned.point.quality >= target else "misses"
        out += (f"; at the val-tuned bar {a.headline_bar:.3f}: {pct(rm.saving(tuned.point, gem))}"
                f" saved, quality {tuned.point.quality:.4f} ({ok} the 95% mark)")
    if a.type_oracle_reach is not None:
        out += f"; per-task-type oracle: {pct(rm.saving(a.type_oracle_reach, gem))}"
    return out


def _convergence_line(a: Analysis) -> str:
    if not a.windows:
        return f"Convergence: bar {a.headline_bar:.3f} was not in the sweep"
    big = [n for s, n in a.settled.items() if a.sources[s] >= 20]
    stable = ("never (shares still move >= 5 points between the last windows)"
              if a.stable_from is None else
              f"from prompt {a.windows[a.stable_from].start} (window {a.stable_from})")
    return (f"Convergence at bar {a.headline_bar:.3f}: model shares per {WINDOW}-prompt window "
            f"stable to < 5 points {stable}; task types with >= 20 prompts settle after a "
            f"median of {statistics.median(big) if big else 0:g} of their own prompts "
            f"(max {max(big, default=0)})")


def learning_line(a: Analysis) -> str:
    learned = sum(r.learned_decisions for r in a.runs)
    total = len(a.runs) * a.prompts
    state = "PRESENT" if learned else "ABSENT (catalog priors only)"
    return (f"Learning: {state}: {learned} of {total} decisions carried a quality estimate "
            "other than the catalog prior")


def breaker_line(a: Analysis) -> str:
    hit = {r.spec.name: r.breaker_decisions for r in a.runs if r.breaker_decisions}
    if not hit:
        return "Circuit breakers: no decision dropped a candidate as circuit_open"
    runs = ", ".join(f"{name} {n}" for name, n in hit.items())
    return ("Circuit breakers: decisions that dropped a candidate as circuit_open (reward < 0.5 "
            f"is reported as PERMANENT_ERROR): {runs}")


# --- whole reports --------------------------------------------------------------------------

def sections(a: Analysis) -> list[tuple[str, Table]]:
    out = [("Single models and the per-prompt oracle", singles_table(a)),
           ("Three models: sweep of the quality bar (policy replay)", three_table(a)),
           ("Three models: area under the cost/quality hull", aiq_table(a))]
    if a.two:
        out.append(("Two models, RouteLLM (policy weak_strong)", two_table(a)))
    if a.windows:
        out.append((f"Convergence at bar {a.headline_bar:.3f}: windows of {WINDOW} prompts",
                    windows_table(a)))
        out.append(("Convergence per task type", settled_table(a)))
    return out


def console(a: Analysis) -> str:
    parts = [f"replay of {a.file}: {a.prompts} prompts, {len(a.runs)} runs", learning_line(a),
             breaker_line(a), *headline(a)]
    for title, table in sections(a):
        parts += ["", title, table.text()]
    return "\n".join(parts)


def markdown(a: Analysis, meta: Mapping[str, str]) -> str:
    parts = [f"- {k}: {v}" for k, v in meta.items()]
    parts += [f"- {learning_line(a)}", f"- {breaker_line(a)}", "", "#### Headline", ""]
    parts += [f"- {line}" for line in headline(a)]
    for title, table in sections(a):
        parts += ["", f"#### {title}", "", table.md()]
    return "\n".join(parts) + "\n"
