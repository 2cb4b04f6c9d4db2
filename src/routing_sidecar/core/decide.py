"""The whole routing decision, README steps 1-6, as one pure function over an immutable view.

`decide(task, catalog, view)` is the only place a routing decision is made: Route, RouteStream,
Complete, the HTTP API and the benchmarks all call it. Its inputs are the task, the catalog
(config, precompiled) and a `DecisionView` the service snapshots once per decision, so the same
inputs always give the same Selection; nothing is drawn or read twice.

Quality floors route rather than refuse. A candidate stands on one rung of a ladder against
the floor (`Level`): proven, admitted by this decision's exploration draw, estimated to meet
it, or below it. The decision first tries the proven and explored; when the floor leaves
nobody to rank, it routes on the estimate alone; when no estimate meets the floor it runs the
best estimate anyway (BELOW_FLOOR). Only a critical policy or lane refuses instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from routing_sidecar.core import reasons
from routing_sidecar.core.candidates import (
    Cand,
    Level,
    alternatives,
    best_slots,
    capable,
    first_block,
    qualify,
    slotted,
)
from routing_sidecar.core.catalog import Catalog
from routing_sidecar.core.reasons import signed_usd, usd
from routing_sidecar.core.rules import (
    is_critical,
    reservation_reason,
    resolve_objective,
    resolve_policy,
    tier_ceiling,
)
from routing_sidecar.core.scoring import WEIGHTS, cheapest_paid, fallback_chain, score
from routing_sidecar.core.view import EMPTY_VIEW, DecisionView, QualitySignal
from routing_sidecar.domain import (
    DecisionStatus,
    Fallback,
    Objective,
    OnExceed,
    Policy,
    ReasonCode,
    Rejection,
    Selection,
    Task,
    TierRules,
)
from routing_sidecar.quick_init import quick_init

DEFAULT_OUTPUT_TOKENS = 1024
_ALL_LEVELS = (Level.EXPLORED, Level.ESTIMATED, Level.BELOW)
_CRITICAL_LEVELS = (Level.EXPLORED,)  # no draws are made on critical lanes: proven only


@quick_init
@dataclass(frozen=True, slots=True)
class _Frame:
    """What one decision resolved before looking at candidates (README step 1)."""

    task: Task
    catalog: Catalog
    view: DecisionView
    policy: Policy
    objective: Objective
    output: int
    floor: float | None
    critical: bool

    @property
    def where(self) -> str:
        return f"{self.task.task_type} under policy {self.policy.name}"


def estimate_output_tokens(task: Task, policy: Policy) -> int:
    """Return the task's own output cap, else the policy's, else a default."""
    if task.max_output_tokens > 0:
        return task.max_output_tokens
    return policy.max_output_tokens or DEFAULT_OUTPUT_TOKENS


def decide(task: Task, catalog: Catalog, view: DecisionView = EMPTY_VIEW) -> Selection:
    """Decide which of the policy's models runs the task, with fallbacks and every why."""
    policy = resolve_policy(task, catalog)
    floors = [f for f in (task.requires.min_quality, policy.quality_floor) if f is not None]
    frame = _Frame(
        task, catalog, view, policy, resolve_objective(task, policy, catalog),
        estimate_output_tokens(task, policy), max(floors) if floors else None,
        is_critical(task, policy, catalog.critical_lanes),
    )
    if frame.floor is None:
        return _pass(frame, Level.BELOW)[0]
    for level in _CRITICAL_LEVELS if frame.critical else _ALL_LEVELS:
        selection, lower_the_bar = _pass(frame, level)
        if not lower_the_bar:
            break
    return selection


def _pass(f: _Frame, level: Level) -> tuple[Selection, bool]:
    """One run of steps 2-6 admitting candidates up to `level` of the floor's ladder.

    The flag says the floor alone left nobody to rank, so a lower rung may route the task.
    """
    task, view = f.task, f.view
    tokens = task.estimated_input_tokens + f.output
    cands = _candidates(f)
    alive: list[Cand] = []
    floor_fell = False
    for c in cands:
        if c.drop(capable(task, c, tokens, view)):
            continue
        if f.floor is not None:
            qualify(c, f.floor, f.critical, view.exploration)
            if c.level > level:
                c.drop((Rejection.QUALITY, c.note))
                floor_fell = True
                continue
        alive.append(c)
    reserved = 0
    if task.value_micros is None:  # with a value the arithmetic decides, not the tier ceiling
        alive, reserved = _reserve_tiers(task, alive, f.catalog.tiers, view.ev_threshold)
    limit = f.policy.max_cost_per_task_micros
    if limit is not None:
        alive = [c for c in alive if not c.drop(_over_max(c, limit))]
    if task.available_slots:
        best = best_slots(task.available_slots)
        alive = [c for c in alive if not c.drop(slotted(c, best))]
    if not alive:
        waiting = any(c.rejection is Rejection.NO_SLOT for c in cands)
        return _blocked(f, cands, floor_fell), floor_fell and not waiting
    ranked = _rank(f, alive, level)
    return _choose(f, cands, ranked, level, reserved, floor_fell)


def _candidates(f: _Frame) -> list[Cand]:
    """The policy's models in configured order, each with its cost and quality signal."""
    inp, out = f.task.estimated_input_tokens, f.output
    quality = f.view.quality
    cands = []
    for i, m in enumerate(f.catalog.candidates(f.policy)):
        signal = quality.get(m.name)
        cands.append(Cand(i, m, m.cost_micros(inp, out),
                          signal if signal is not None else QualitySignal.known(m.quality)))
    return cands


def _reserve_tiers(
    task: Task, alive: list[Cand], tiers: TierRules, ev_threshold: float | None
) -> tuple[list[Cand], int]:
    """Drop candidates above the task's tier ceiling; return the kept and how many fell.

    The ceiling is fixed before cost, budget and slot checks, so none of them promotes a task.
    """
    if not alive:
        return alive, 0
    ceiling = tier_ceiling(task, tiers, min([c.model.tier for c in alive]), ev_threshold)
    if ceiling is None:
        return alive, 0
    kept = [c for c in alive if c.model.tier <= ceiling]
    if len(kept) == len(alive):
        return alive, 0
    why = reservation_reason(task, tiers, ev_threshold)
    for c in alive:
        if c.model.tier > ceiling:
            c.drop((Rejection.TIER_RESERVED, reasons.tier_reserved(c.model.tier, why)))
    return kept, len(alive) - len(kept)


def _over_max(c: Cand, limit: int) -> tuple[Rejection, str] | None:
    if c.cost > limit:
        return Rejection.MAX_COST, f"est. {usd(c.cost)} above policy max {usd(limit)}"
    return None


def _rank(f: _Frame, alive: list[Cand], level: Level) -> list[Cand]:
    """Score every survivor (step 4) and order them best first.

    By the objective's weighted score; with a task value by expected net value (with this
    decision's Thompson draws when it may explore); below the floor by the estimate itself.
    Ties go to the idlest slot, then to the policy's configured order.
    """
    weights = WEIGHTS[f.objective]
    tokens = f.task.estimated_input_tokens + f.output
    ref = cheapest_paid(c.cost for c in alive)
    max_speed = max(c.model.tokens_per_s for c in alive)
    penalties = f.view.penalties
    value = f.task.value_micros
    sampled: dict[int, int] = {}
    for c in alive:
        m = c.model
        pen = penalties.get(m.name, 0.0)
        c.score = score(c.cost, ref, m.tokens_per_s, max_speed, c.quality,
                        tokens / m.context_window, weights, pen)
        if value is not None:
            c.net = _net(value, c.quality, pen, c.cost)
            draw = c.signal.draw
            if draw is not None and not f.critical:
                sampled[c.index] = _net(value, draw, pen, c.cost)

    def util(c: Cand) -> float:
        return c.slot.utilisation if c.slot else 0.0

    if f.floor is not None and level is Level.BELOW:
        alive.sort(key=lambda c: (-(c.quality - penalties.get(c.model.name, 0.0)), -c.score,
                                  util(c), c.index))
    elif value is not None:
        alive.sort(key=lambda c: (-sampled.get(c.index, c.net or 0), -c.score, util(c),
                                  c.index))
    else:
        alive.sort(key=lambda c: (-c.score, util(c), c.index))
    return alive


def _net(value: int, quality: float, penalty: float, cost: int) -> int:
    """Value x estimated quality (demoted by health) - estimated cost, in micro-USD."""
    q = min(1.0, max(0.0, quality - penalty))
    return round(value * q) - cost


def _choose(f: _Frame, cands: list[Cand], ranked: list[Cand], level: Level,
            reserved: int, floor_fell: bool) -> tuple[Selection, bool]:
    """Step 5 with budgets: the best that fits, or the on_exceed verdict of the preferred.

    The flag asks for a lower rung of the floor: a downgrade found nothing that fits among
    the models this rung admits, while the floor kept others out.
    """
    budgets = f.view.budgets
    down = f.view.budgets_unavailable
    if down is not None and any(budgets.get(c.model.name) for c in ranked):
        return _budgets_unavailable(f, cands, ranked, down), False
    fitting = []
    for c in ranked:
        c.block = first_block(budgets.get(c.model.name, ()), c.cost)
        if c.block is None:
            fitting.append(c)
    preferred = ranked[0]
    block = preferred.block
    if block is not None and (block.rule.on_exceed is OnExceed.REJECT or not fitting):
        downgrade = block.rule.on_exceed is OnExceed.DOWNGRADE
        return _over_budget(f, cands, ranked, preferred), downgrade and floor_fell
    for c in ranked:
        if c.block is not None:
            c.drop((Rejection.BUDGET, c.block.reason(c.cost)))
    top = fitting[0]
    chain = fallback_chain(fitting, lambda c: c.model.provider, f.policy.fallbacks)
    explored = top.level is Level.EXPLORED
    if f.task.value_micros is not None:
        greedy = min(fitting, key=lambda c: (-(c.net or 0), -c.score, c.index))
        explored = explored or greedy is not top
    _mark(f, cands, top, chain, explored)
    alts = alternatives(cands, f.floor is not None)
    reason = _reason(f, top, fitting, level, explored, reserved,
                     len(cands) - len(fitting) - reserved)
    code = ReasonCode.SELECTED
    if f.floor is not None and level is Level.BELOW:
        code = ReasonCode.BELOW_FLOOR
    if block is not None:
        code = ReasonCode.DOWNGRADED
        reason += f" Downgraded from {preferred.model.name}: {block.reason(preferred.cost)}."
    fallbacks = tuple([
        Fallback(c.model.name, c.model.provider, c.model.tier, c.cost,
                 c.slot.slot_id if c.slot else None)
        for c, _ in chain
    ])
    return Selection(DecisionStatus.ROUTED, code, f.policy.name, f.objective, reason, alts,
                     alts[top.index], fallbacks, explored), False


def _mark(f: _Frame, cands: Sequence[Cand], top: Cand, chain: Sequence[tuple[Cand, bool]],
          explored: bool) -> None:
    """Give the chosen, the fallbacks and the outscored survivors their rejection and why."""
    value = f.task.value_micros is not None
    top.rejection, top.reason = Rejection.CHOSEN, reasons.chosen(value, explored)
    for n, (c, fresh) in enumerate(chain, 1):
        c.rejection, c.reason = Rejection.FALLBACK, reasons.fallback(n, fresh)
    for c in cands:
        if c.rejection is not None:
            continue
        c.rejection = Rejection.OUTSCORED
        if value:
            c.reason = reasons.net_against(c.net or 0, top.net or 0)
        elif c.score < top.score:
            c.reason = reasons.below(c.score, top.score)
        else:
            c.reason = reasons.ties(c.score)


def _reason(f: _Frame, top: Cand, fitting: Sequence[Cand], level: Level, explored: bool,
            reserved: int, filtered: int) -> str:
    """The sentence a person reads: what was chosen, on what grounds, what fell."""
    m = top.model
    head = f"{m.name} ({m.provider}, tier {m.tier}) for {f.where}"
    rest = reasons.tally(reserved, filtered)
    if f.floor is not None and level is Level.BELOW:
        return (f"{head}: no capable model's estimate meets floor {f.floor:.2f}, so the best "
                f"estimate runs ({top.quality:.2f}) at est. {usd(top.cost)}{rest}.")
    value = f.task.value_micros
    if value is not None:
        runner = next((c for c in sorted(fitting, key=lambda c: -(c.net or 0))
                       if c is not top), None)
        if runner is None:
            why = (f"expected net {signed_usd(top.net or 0)} (quality {top.quality:.2f} x "
                   f"{usd(value)} - {usd(top.cost)})")
        else:
            why = (f"{m.name}: {signed_usd((top.net or 0) - (runner.net or 0))} expected over "
                   f"{runner.model.name} at {usd(top.cost)} vs {usd(runner.cost)}")
        text = f"{head}, value {usd(value)}: {why}{' (exploring)' * explored}{rest}."
    else:
        text = reasons.routed(reasons.Routed(
            m.name, m.provider, m.tier, f.task.task_type, f.policy.name, f.objective,
            top.score, top.cost), reserved, filtered)
    if f.floor is not None and level is Level.ESTIMATED:
        text += (" No model proven above the quality floor is available, so the choice rests "
                 "on estimated quality alone.")
    return text


def _over_budget(f: _Frame, cands: list[Cand], ranked: list[Cand], preferred: Cand) -> Selection:
    """The preferred model is over a budget that rejects, or nothing fits one that downgrades."""
    block = preferred.block
    assert block is not None
    why = block.reason(preferred.cost)
    if block.rule.on_exceed is OnExceed.REJECT:
        reason = (f"{f.task.task_type} rejected under policy {f.policy.name}: "
                  f"{preferred.model.name} is over budget ({why}; on_exceed reject).")
        note = f"not used: {why} and that budget rejects rather than downgrades"
    else:
        reason = (f"no model for {f.where} fits the budget: {preferred.model.name} is over "
                  f"budget ({why}) and no cheaper model fits to downgrade to.")
        note = ""
    for c in ranked:
        c.drop((Rejection.BUDGET, c.block.reason(c.cost) if c.block else note))
    return Selection(DecisionStatus.REJECTED, ReasonCode.BUDGET_EXHAUSTED, f.policy.name,
                     f.objective, reason, alternatives(cands, f.floor is not None))


def _budgets_unavailable(f: _Frame, cands: list[Cand], ranked: list[Cand],
                         why: str) -> Selection:
    """Budgets fail closed: a task that has one is refused while they cannot be checked."""
    for c in ranked:
        c.drop((Rejection.BUDGET, f"budgets cannot be checked: {why}"))
    reason = f"{f.task.task_type} refused under policy {f.policy.name}: {why}."
    return Selection(DecisionStatus.REJECTED, ReasonCode.BUDGET_UNAVAILABLE, f.policy.name,
                     f.objective, reason, alternatives(cands, f.floor is not None))


def _blocked(f: _Frame, cands: list[Cand], floor_fell: bool) -> Selection:
    """No survivor: await a slot if only slots were missing, else no capable model."""
    waiting = [c.model.name for c in cands if c.rejection is Rejection.NO_SLOT]
    if waiting:
        status, code = DecisionStatus.AWAIT_SLOT, ReasonCode.AWAITING_SLOT
        names = ", ".join(waiting[:3]) + (f" and {len(waiting) - 3} more" * (len(waiting) > 3))
        reason = f"{f.where} awaits a slot: {names} could run it but no slot is free"
    else:
        status, code = DecisionStatus.REJECTED, ReasonCode.NO_CAPABLE_MODEL
        reason = f"no capable model for {f.where}"
        if f.critical and floor_fell:
            reason += " (a critical lane runs only models proven above the floor)"
    counts: dict[Rejection, int] = {}
    for c in cands:
        if c.rejection is not None:
            counts[c.rejection] = counts.get(c.rejection, 0) + 1
    dropped = ", ".join(f"{n} {r}" for r, n in counts.items())
    return Selection(status, code, f.policy.name, f.objective, f"{reason} (dropped: {dropped}).",
                     alternatives(cands, f.floor is not None))
