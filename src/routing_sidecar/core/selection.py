"""Filter -> tier ceiling -> cost -> slots -> score -> choose -> fallback chain -> reason."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from routing_sidecar.core.catalog import Catalog
from routing_sidecar.core.rules import (
    reservation_reason,
    resolve_objective,
    resolve_policy,
    tier_ceiling,
)
from routing_sidecar.core.scoring import WEIGHTS, fallback_chain, score
from routing_sidecar.domain import (
    MICROS_PER_USD,
    Alternative,
    DecisionStatus,
    Fallback,
    ModelSpec,
    Objective,
    Policy,
    ReasonCode,
    Rejection,
    Selection,
    Slot,
    Task,
    TierRules,
)

CandidateFilter = Callable[[Task, ModelSpec, int], tuple[Rejection, str] | None]
Verdict = tuple[Rejection, str] | None
# (task, model, floor) -> why the model does not clear the quality floor, None when it does.
QualityCheck = Callable[[Task, ModelSpec, float], tuple[Rejection, str] | None]
DEFAULT_OUTPUT_TOKENS = 1024


@dataclass(frozen=True, slots=True)
class Signals:
    """Inputs beyond task and catalog, passed in so decisions stay reproducible."""

    ev_threshold: float | None = None
    capability_filters: tuple[CandidateFilter, ...] = ()
    cost_filters: tuple[CandidateFilter, ...] = ()
    quality: Callable[[str, ModelSpec], float] | None = None
    # (task_type, model) -> amount subtracted from the score: health demotion.
    penalty: Callable[[str, ModelSpec], float] | None = None
    # Replaces the plain `estimated quality < floor` test when a floor applies (learned
    # quality with confidence, critical lanes, exploration).
    quality_check: QualityCheck | None = None


_NO_SIGNALS = Signals()


class _Cand:
    """Mutable per-call working state of one policy candidate."""

    __slots__ = ("budget", "cost", "index", "model", "quality", "reason", "rejection", "score",
                 "slot")

    def __init__(self, index: int, model: ModelSpec, cost: int, quality: float) -> None:
        self.index, self.model, self.cost, self.quality = index, model, cost, quality
        self.rejection: Rejection | None = None
        self.reason = ""
        self.slot: Slot | None = None
        self.score = 0.0
        self.budget = False  # dropped by a cost filter with Rejection.BUDGET

    def drop(self, verdict: Verdict) -> bool:
        """Record a filter's verdict; True when the candidate fell."""
        if verdict is None:
            return False
        self.rejection, self.reason = verdict
        return True


def estimate_output_tokens(task: Task, policy: Policy) -> int:
    """Return the task's own output cap, else the policy's, else a default."""
    if task.max_output_tokens > 0:
        return task.max_output_tokens
    return policy.max_output_tokens or DEFAULT_OUTPUT_TOKENS


def select(task: Task, catalog: Catalog, signals: Signals = _NO_SIGNALS) -> Selection:
    """Decide which of the policy's models runs the task, with fallbacks and every why."""
    policy = resolve_policy(task, catalog)
    objective = resolve_objective(task, policy, catalog)
    output = estimate_output_tokens(task, policy)
    floors = (task.requires.min_quality, policy.quality_floor)
    floor = max((f for f in floors if f is not None), default=None)
    cands, alive = _stage_a(task, catalog.candidates(policy), output, floor, signals)
    # The ceiling is fixed before cost and slot checks, so neither can promote a task.
    alive, reserved = _reserve_tiers(task, alive, catalog.tiers, signals.ev_threshold)
    limit = policy.max_cost_per_task_micros
    if limit is not None or signals.cost_filters:
        alive = [c for c in alive if not c.drop(_affordable(task, c, limit, signals))]
    if task.available_slots:
        best = _best_slots(task.available_slots)
        alive = [c for c in alive if not c.drop(_slotted(c, best))]
    if not alive:
        return _blocked(task, policy, objective, cands)
    _score(alive, task.estimated_input_tokens + output, objective, task.task_type,
           signals.penalty)
    # Best score first; ties go to the idlest slot, then to the policy's configured order.
    alive.sort(key=lambda c: (-c.score, c.slot.utilisation if c.slot else 0.0, c.index))
    top = alive[0]
    chain = fallback_chain(alive, lambda c: c.model.provider, policy.fallbacks)
    _mark(cands, top, chain)
    alts = _alternatives(cands)
    fallbacks = tuple([
        Fallback(c.model.name, c.model.provider, c.model.tier, c.cost,
                 c.slot.slot_id if c.slot else None)
        for c, _ in chain
    ])
    m = top.model
    filtered = len(cands) - len(alive) - reserved
    reason = (
        f"{m.name} ({m.provider}, tier {m.tier}) for {task.task_type} under policy "
        f"{policy.name}, objective {objective}: best score {top.score:.4g} at est. "
        f"{_usd(top.cost)}{_tally(reserved, filtered)}."
    )
    return Selection(DecisionStatus.ROUTED, ReasonCode.SELECTED, policy.name, objective,
                     reason, alts, alts[top.index], fallbacks)


def _stage_a(
    task: Task, models: Sequence[ModelSpec], output: int, floor: float | None, signals: Signals
) -> tuple[list[_Cand], list[_Cand]]:
    """Estimate each policy model's cost and quality once; keep those passing stage A."""
    inp = task.estimated_input_tokens
    tokens = inp + output
    quality_of = signals.quality
    kind = task.task_type
    excluded, req = task.exclude_models, task.requires
    caps, min_tier = req.capabilities, req.min_tier
    slow = bool(signals.capability_filters)
    checked = floor is not None and signals.quality_check is not None
    cands: list[_Cand] = []
    alive: list[_Cand] = []
    for i, m in enumerate(models):
        c = _Cand(i, m, m.cost_micros(inp, output),
                  m.quality if quality_of is None else quality_of(kind, m))
        cands.append(c)
        # Cheap inline test first; the full check (which words the reason) only on a hit.
        if slow or m.tier < min_tier or tokens > m.context_window or m.name in excluded or (
            caps and not caps <= m.capabilities
        ) or checked or (floor is not None and c.quality < floor):
            verdict = _capable(task, c, tokens, floor, signals)
            if verdict is not None:
                c.rejection, c.reason = verdict
                continue
        alive.append(c)
    return cands, alive


def _capable(
    task: Task, c: _Cand, tokens: int, floor: float | None, signals: Signals
) -> Verdict:
    """Stage A: the first capability-type filter the candidate fails, if any."""
    m, req = c.model, task.requires
    if m.name in task.exclude_models:
        return Rejection.EXCLUDED, "excluded by the request"
    if req.capabilities and not req.capabilities <= m.capabilities:
        missing = ", ".join(sorted(req.capabilities - m.capabilities))
        return Rejection.CAPABILITY, f"lacks capability: {missing}"
    if m.tier < req.min_tier:
        return Rejection.MIN_TIER, f"tier {m.tier} below required tier {req.min_tier}"
    if tokens > m.context_window:
        return Rejection.CONTEXT_WINDOW, (
            f"needs {tokens} tokens (input + output), context window is {m.context_window}"
        )
    check = signals.quality_check
    if floor is not None and check is None and c.quality < floor:
        return Rejection.QUALITY, f"estimated quality {c.quality:.2f} below floor {floor:.2f}"
    for f in signals.capability_filters:
        verdict = f(task, m, c.cost)
        if verdict is not None:
            return verdict
    # Last, so a model already out (circuit open, ...) spends no exploration draw.
    return check(task, m, floor) if floor is not None and check is not None else None


def _reserve_tiers(
    task: Task, alive: list[_Cand], tiers: TierRules, ev_threshold: float | None
) -> tuple[list[_Cand], int]:
    """Drop candidates above the task's tier ceiling; return the kept and how many fell."""
    if not alive:
        return alive, 0
    ceiling = tier_ceiling(task, tiers, min([c.model.tier for c in alive]), ev_threshold)
    if ceiling is None:
        return alive, 0
    kept = [c for c in alive if c.model.tier <= ceiling]
    if len(kept) == len(alive):
        return alive, 0
    why = reservation_reason(task, tiers, ev_threshold)
    # One message per reserved tier (at most a few), shared by all of that tier's models.
    verdicts = {t: (Rejection.TIER_RESERVED, f"tier {t} reserved: {why}")
                for t in {c.model.tier for c in alive} if t > ceiling}
    for c in alive:
        if c.model.tier > ceiling:
            c.drop(verdicts[c.model.tier])
    return kept, len(alive) - len(kept)


def _affordable(task: Task, c: _Cand, limit: int | None, signals: Signals) -> Verdict:
    """Stage B: the policy's per-task cap, then each cost filter (budget headroom)."""
    if limit is not None and c.cost > limit:
        return Rejection.MAX_COST, f"est. {_usd(c.cost)} above policy max {_usd(limit)}"
    for f in signals.cost_filters:
        verdict = f(task, c.model, c.cost)
        if verdict is not None:
            c.budget = verdict[0] is Rejection.BUDGET
            return verdict
    return None


def _best_slots(slots: Iterable[Slot]) -> dict[str, Slot | None]:
    """Per offered model, its least-utilised free slot (None when every one is full)."""
    best: dict[str, Slot | None] = {}
    for s in slots:
        cur = best.get(s.model)
        if s.utilisation < 1.0 and (cur is None or s.utilisation < cur.utilisation):
            best[s.model] = s
        elif s.model not in best:
            best[s.model] = None
    return best


def _slotted(c: _Cand, best: dict[str, Slot | None]) -> Verdict:
    name = c.model.name
    if name not in best:
        return Rejection.NO_SLOT, "no slot offered for this model"
    c.slot = best[name]
    return (Rejection.NO_SLOT, "every offered slot is full") if c.slot is None else None


def _score(
    alive: list[_Cand], tokens: int, objective: Objective, kind: str,
    penalty: Callable[[str, ModelSpec], float] | None,
) -> None:
    """Score survivors, normalising cost and speed within the surviving set."""
    weights = WEIGHTS[objective]
    min_cost, max_speed = alive[0].cost, 0.0
    for c in alive:
        min_cost = min(min_cost, c.cost)
        max_speed = max(max_speed, c.model.tokens_per_s)
    for c in alive:
        m = c.model
        c.score = score(c.cost, min_cost, m.tokens_per_s, max_speed, c.quality,
                        tokens / m.context_window, weights,
                        0.0 if penalty is None else penalty(kind, m))


def _mark(cands: Sequence[_Cand], top: _Cand, chain: Sequence[tuple[_Cand, bool]]) -> None:
    """Give the chosen, the fallbacks and the outscored survivors their rejection and why."""
    top.rejection, top.reason = Rejection.CHOSEN, "chosen: best score"
    for n, (c, fresh) in enumerate(chain, 1):
        why = "different provider" if fresh else "next best, no other provider left"
        c.rejection, c.reason = Rejection.FALLBACK, f"fallback {n}: {why}"
    best, outscored = top.score, Rejection.OUTSCORED
    for c in cands:
        if c.rejection is None:
            c.rejection = outscored
            c.reason = (
                f"score {c.score:.4g} below chosen {best:.4g}" if c.score < best
                else f"score {c.score:.4g} ties chosen; lost on slot utilisation or policy order"
            )


def _alternatives(cands: Sequence[_Cand]) -> tuple[Alternative, ...]:
    """Every candidate in policy order with its score, cost and why it was (not) chosen."""
    return tuple([
        Alternative(c.model.name, c.model.provider, c.model.tier, c.score, c.cost,
                    c.rejection or Rejection.OUTSCORED, c.reason, c.quality,
                    c.slot.slot_id if c.slot else None)
        for c in cands
    ])


def _blocked(task: Task, policy: Policy, objective: Objective, cands: list[_Cand]) -> Selection:
    """No survivor: await a slot if only slots were missing, else reject with the cause."""
    waiting = [c.model.name for c in cands if c.rejection is Rejection.NO_SLOT]
    where = f"{task.task_type} under policy {policy.name}"
    if waiting:
        status, code = DecisionStatus.AWAIT_SLOT, ReasonCode.AWAITING_SLOT
        names = ", ".join(waiting[:3]) + (f" and {len(waiting) - 3} more" * (len(waiting) > 3))
        reason = f"{where} awaits a slot: {names} could run it but no slot is free"
    elif any(c.budget for c in cands):
        status, code = DecisionStatus.REJECTED, ReasonCode.BUDGET_EXHAUSTED
        reason = f"no model for {where} fits the budget"
    else:
        status, code = DecisionStatus.REJECTED, ReasonCode.NO_CAPABLE_MODEL
        reason = f"no capable model for {where}"
    counts = Counter(c.rejection for c in cands if c.rejection is not None)
    dropped = ", ".join(f"{n} {r}" for r, n in counts.items())
    return Selection(status, code, policy.name, objective, f"{reason} (dropped: {dropped}).",
                     _alternatives(cands))


def _tally(reserved: int, filtered: int) -> str:
    """'; 2 higher-tier models reserved, 1 filtered' (empty when nothing fell)."""
    parts = []
    if reserved:
        parts.append(f"{reserved} higher-tier model{'s' * (reserved != 1)} reserved")
    if filtered:
        parts.append(f"{filtered} filtered")
    return f"; {', '.join(parts)}" if parts else ""


def _usd(micros: int) -> str:
    return f"${micros / MICROS_PER_USD:.4f}"
