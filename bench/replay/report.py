"""Print an Analysis: headline sentences and tables, as console text or Markdown."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.replay import data
from bench.replay import metrics as rm
from bench.replay.analysis import (
    GAP_ORACLE,
    LAMBDA_ORACLE,
    PROMPT_ORACLE,
    WINDOW,
    ZERO_ROUTER,
    Analysis,
    Convergence,
    SweepFigures,
)
from bench.replay.data import MODELS, STRONG
from bench.replay.metrics import PairCurve, Point
from bench.replay.run import Knob

SHORT = {**data.SHORT, rm.NONE: "none"}
SWEEP_NAME = {Knob.VALUE: "value sweep (value_micros)", Knob.BAR: "bar sweep (min_quality)"}
# The benchmark targets (docs/replay.md): checked and printed, never asserted.
APGR_VALUE, CPT50_VALUE, APGR_BAR, SAVING = 0.58, 0.40, 0.55, 0.97


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


def level(knob: Knob, x: float) -> str:
    """A sweep point as people read it: bar 0.725, value $0.056."""
    return f"{x:.3f}" if knob is Knob.BAR else f"${x:.3g}"


def share_cells(shares: Mapping[str, float]) -> list[str]:
    return [pct(shares.get(m, 0.0), 0) for m in MODELS]


# --- tables ---------------------------------------------------------------------------------

def singles_table(a: Analysis) -> Table:
    rows = [[m, f"{p.quality:.4f}", usd(p.cost)] for m, p in a.refs.singles.items()]
    p = a.refs.prompt_oracle
    rows.append([PROMPT_ORACLE, f"{p.quality:.4f}", usd(p.cost)])
    return Table(["always", "quality", "$/prompt"], rows)


def _pair_cells(c: PairCurve) -> list[str]:
    return [f"{c.apgr:.3f}", pct(c.cpt50), pct(c.cpt80)]


def pair_table(a: Analysis) -> Table:
    """RouteLLM figures of both sweeps beside the oracles and the random mix."""
    rows = [[f"router, {SWEEP_NAME[k]}", *_pair_cells(s.pair), str(s.refusals)]
            for k, s in a.sweeps.items() if s.pair is not None]
    rows += [[name, *_pair_cells(c), "-"] for name, c in a.refs.pairs.items()]
    return Table(["llama/gemini", "APGR", "CPT(50%)", "CPT(80%)",
                  "refusals (whole sweep, both policies)"], rows)


def aiq_table(a: Analysis) -> Table:
    rows = [[f"router, {SWEEP_NAME[k]}", f"{s.aiq[0]:.4f}", f"{s.aiq[1]:.4f}"]
            for k, s in a.sweeps.items() if s.aiq is not None]
    rows += [[name, f"{lin:.4f}", f"{log:.4f}"] for name, (lin, log) in a.refs.aiq.items()]
    return Table(["three models", "AIQ (linear cost)", "AIQ (log cost)"], rows)


def targets_table(a: Analysis) -> Table:
    """The issue's targets against what this run measured (figures, not test assertions)."""
    rows: list[list[str]] = []

    def add(what: str, goal: str, got: float | None, ok: bool, ref: str) -> None:
        shown = "-" if got is None else (f"{got:.3f}" if goal.startswith("APGR") else pct(got))
        rows.append([what, goal, shown, "met" if ok else "MISSED", ref])

    gap = a.refs.pairs[GAP_ORACLE]
    value, bar = a.sweeps.get(Knob.VALUE), a.sweeps.get(Knob.BAR)
    if value is not None and value.pair is not None:
        add("value sweep, llama/gemini", f"APGR >= {APGR_VALUE}", value.pair.apgr,
            value.pair.apgr >= APGR_VALUE, f"{gap.apgr:.3f}")
        c50 = value.pair.cpt50
        add("value sweep, llama/gemini", f"CPT(50%) <= {pct(CPT50_VALUE, 0)}", c50,
            c50 is not None and c50 <= CPT50_VALUE, pct(gap.cpt50))
    if bar is not None and bar.pair is not None:
        add("bar sweep, llama/gemini", f"APGR >= {APGR_BAR}", bar.pair.apgr,
            bar.pair.apgr >= APGR_BAR, f"{gap.apgr:.3f}")
    for k, s in a.sweeps.items():
        rows.append([SWEEP_NAME[k], "no refusals", str(s.refusals),
                     "met" if s.refusals == 0 else "MISSED", "-"])
        got = _saved(a, s.reach[1]) if s.reach else None
        ref = a.refs.type_oracle_reach
        add(f"{SWEEP_NAME[k]}, three models", f"saved >= {pct(SAVING, 0)} at 95% of gemini",
            got, got is not None and got >= SAVING, pct(_saved(a, ref)) if ref else "-")
    # APGR and CPT beside the gap-ordered oracle, the saving beside the lambda one.
    return Table(["sweep", "target", "measured", "", "per-task-type oracle"], rows)


def _saved(a: Analysis, p: Point) -> float:
    return rm.saving(p, a.refs.singles[STRONG])


def three_table(a: Analysis, s: SweepFigures) -> Table:
    """The three-model curve; "hull" marks the points on its non-decreasing convex hull."""
    gem = a.refs.singles[STRONG]
    on_hull = set(s.hull)
    rows = [[level(s.knob, x), f"{f.summary.point.quality:.4f}", usd(f.summary.point.cost),
             *share_cells(f.summary.shares), str(f.summary.not_routed),
             str(f.run.below_floor), pct(f.explored, 0), f"{f.late.quality:.4f}",
             pct(f.summary.point.quality / gem.quality), pct(_saved(a, f.summary.point)),
             "yes" if f.summary.point in on_hull else ""]
            for x, f in sorted(s.three.items())]
    heads = [s.knob.value, "quality", "$/prompt", *(SHORT[m] for m in MODELS), "not routed",
             "below floor", "explored", "quality 2nd half", "% of gemini q", "saved vs gemini",
             "hull"]
    return Table(heads, rows)


def two_table(a: Analysis, s: SweepFigures) -> Table:
    """The weak/strong curve, with the gap-ordered oracle and the random mix at each share."""
    oracle = a.refs.pairs[GAP_ORACLE]
    rows = [[level(s.knob, x), f"{f.summary.point.quality:.4f}", usd(f.summary.point.cost),
             pct(f.strong_share), f"{f.pgr or 0.0:+.3f}", f"{oracle.at(f.strong_share):+.3f}",
             f"{f.strong_share:+.3f}", str(f.summary.not_routed), str(f.run.below_floor),
             pct(f.explored, 0)]
            for x, f in sorted(s.two.items())]
    return Table([s.knob.value, "quality", "$/prompt", "calls to gemini", "PGR",
                  "oracle PGR at that share", "random-mix PGR", "not routed", "below floor",
                  "explored"], rows)


def gap_table(a: Analysis) -> Table:
    """The gap-ordered oracle step by step: which task type goes to gemini next."""
    rows = [["0", "(none: always llama)", "-", "-", pct(0.0), "+0.000"]]
    for k, ((src, gap), (share, pgr)) in enumerate(
            zip(a.refs.gap_order, a.refs.gap_points[1:], strict=True), 1):
        rows.append([str(k), src, str(a.sources[src]), f"{gap:+.3f}", pct(share), f"{pgr:+.3f}"])
    return Table(["step", "task type switched to gemini", "prompts", "gemini - llama",
                  "calls to gemini", "PGR"], rows)


def windows_table(c: Convergence) -> Table:
    rows = [[f"{w.start}-{w.start + WINDOW - 1}", f"{w.point.quality:.4f}", usd(w.point.cost),
             *share_cells(w.shares), pct(x, 0)]
            for w, x in zip(c.windows, c.window_explored, strict=True)]
    return Table(["prompts", "quality", "$/prompt", *(SHORT[m] for m in MODELS), "explored"],
                 rows)


def settled_table(a: Analysis, c: Convergence, min_prompts: int = 20) -> Table:
    rows = [[s, str(n), str(c.settled[s]), SHORT[c.final[s] or rm.NONE]]
            for s, n in a.sources.most_common() if n >= min_prompts]
    return Table(["task type", "prompts", "prompts before its routing last changed "
                  "(exploration aside)", "last routed to"], rows)


# --- headline sentences ---------------------------------------------------------------------

def headline(a: Analysis) -> list[str]:
    """The figures the issue asks for, one line each."""
    lines = [_pair_line(k, s) for k, s in a.sweeps.items() if s.pair is not None]
    refs = a.refs.pairs
    lines.append("References on llama/gemini: " + "; ".join(
        f"{name} APGR {c.apgr:.3f}, CPT(50%) {pct(c.cpt50)}, CPT(80%) {pct(c.cpt80)}"
        for name, c in refs.items()) + " (the gap-ordered oracle is the one to compare with)")
    lines.append(_aiq_line(a))
    lines += [_saving_line(a, k, s) for k, s in a.sweeps.items() if s.three]
    lines += [_convergence_line(a, k, s.convergence) for k, s in a.sweeps.items()
              if s.convergence is not None]
    return lines


def _pair_line(k: Knob, s: SweepFigures) -> str:
    assert s.pair is not None
    p = s.pair
    return (f"RouteLLM, {SWEEP_NAME[k]}, llama weak vs gemini strong: APGR {p.apgr:.3f}, "
            f"CPT(50%) {pct(p.cpt50)}, CPT(80%) {pct(p.cpt80)} of calls to gemini; "
            f"{s.refusals} refusals over the sweep (each counted as a failure, quality 0)")


def _aiq_line(a: Analysis) -> str:
    def pair(x: tuple[float, float]) -> str:
        return f"{x[0]:.4f} / {x[1]:.4f}"

    routers = "; ".join(f"router, {SWEEP_NAME[k]} {pair(s.aiq)}" for k, s in a.sweeps.items()
                        if s.aiq is not None)
    refs = a.refs.aiq
    return (f"RouterBench AIQ, three models (linear / log cost): {routers}; zero router "
            f"{pair(refs[ZERO_ROUTER])}; {LAMBDA_ORACLE} {pair(refs[LAMBDA_ORACLE])}; "
            f"{PROMPT_ORACLE} {pair(refs[PROMPT_ORACLE])}")


def _saving_line(a: Analysis, k: Knob, s: SweepFigures) -> str:
    head = (f"Cost saved vs always-gemini at >= 95% of its quality (>= {a.refs.target:.4f}), "
            f"three models, {SWEEP_NAME[k]}: ")
    if s.reach is None:
        out = head + "no point of the sweep reaches it"
    else:
        x, p = s.reach
        out = (head + f"{pct(_saved(a, p))} at {k.value} {level(k, x)} (cheapest in hindsight; "
               f"quality {p.quality:.4f}, {usd(p.cost)} vs {usd(a.refs.singles[STRONG].cost)})")
    if s.tuned is not None:
        t = s.three[s.tuned].summary.point
        ok = "reaches" if t.quality >= a.refs.target else "misses"
        out += (f"; at the val-tuned {k.value} {level(k, s.tuned)}: {pct(_saved(a, t))} saved, "
                f"quality {t.quality:.4f} ({ok} the mark)")
    if a.refs.type_oracle_reach is not None:
        out += f"; {LAMBDA_ORACLE}: {pct(_saved(a, a.refs.type_oracle_reach))}"
    return out


def _convergence_line(a: Analysis, k: Knob, c: Convergence) -> str:
    big = [n for s, n in c.settled.items() if a.sources[s] >= 20]
    if len(c.windows) < 2:
        stable = f"not measured (fewer than {2 * WINDOW} prompts)"
    elif c.stable_from is None:
        stable = "still moving by 5 points or more between the last two"
    else:
        stable = (f"stable to < 5 points from prompt {c.windows[c.stable_from].start} "
                  f"(window {c.stable_from})")
    return (f"Convergence at the val-tuned {k.value} {level(k, c.level)} (three models): "
            f"model shares per {WINDOW}-prompt window {stable}; task types with >= 20 prompts "
            f"settle after a median of {statistics.median(big) if big else 0:g} of their own "
            f"prompts (max {max(big, default=0)})")


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
    return f"Circuit breakers: decisions that dropped a candidate as circuit_open: {runs}"


# --- whole reports --------------------------------------------------------------------------

def sections(a: Analysis) -> list[tuple[str, Table]]:
    """Every table, titled, in reading order."""
    out = [("Targets of the issue (benchmark targets, not test assertions)", targets_table(a)),
           ("Single models and the per-prompt oracle", singles_table(a)),
           ("RouteLLM, llama vs gemini: both sweeps and the references", pair_table(a)),
           ("RouterBench, three models: area under the cost/quality hull", aiq_table(a))]
    for k, s in a.sweeps.items():
        if s.two:
            out.append((f"Curve, llama/gemini (policy weak_strong), {SWEEP_NAME[k]}",
                        two_table(a, s)))
        if s.three:
            out.append((f"Curve, three models (policy replay), {SWEEP_NAME[k]}",
                        three_table(a, s)))
    out.append(("Per-task-type oracle, gap-ordered: the hindsight curve on llama/gemini",
                gap_table(a)))
    for k, s in a.sweeps.items():
        c = s.convergence
        if c is not None:
            name = f"{k.value} {level(k, c.level)}"
            out.append((f"Convergence at {name}: windows of {WINDOW} prompts", windows_table(c)))
            out.append((f"Convergence at {name}, per task type", settled_table(a, c)))
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
