"""The per-candidate pieces of a decision: hard filters, the quality floor, slots, reasons.

Everything here is pure; `core/decide.py` strings these steps together into the decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import IntEnum

from routing_sidecar.core import reasons
from routing_sidecar.core.view import BudgetLine, DecisionView, Exploration, QualitySignal
from routing_sidecar.domain import (
    Alternative,
    ModelSpec,
    Rejection,
    Slot,
    Task,
)

Verdict = tuple[Rejection, str] | None


class Level(IntEnum):
    """How a candidate stands against the task's quality floor; lower is better."""

    PROVEN = 0  # its lower bound meets the floor, backed by evidence or by its prior
    EXPLORED = 1  # unproven, but this decision's Thompson draw reaches the floor
    ESTIMATED = 2  # unproven; its estimate (mean) meets the floor
    BELOW = 3  # its estimate is below the floor


class Cand:
    """Mutable working state of one policy candidate during one pass of a decision."""

    __slots__ = ("block", "cost", "index", "level", "model", "net", "note", "quality", "reason",
                 "rejection", "score", "signal", "slot")

    def __init__(self, index: int, model: ModelSpec, cost: int, signal: QualitySignal) -> None:
        self.index, self.model, self.cost, self.signal = index, model, cost, signal
        self.quality = signal.mean
        self.level = Level.PROVEN
        self.note = ""  # how it stands against the floor, in words
        self.rejection: Rejection | None = None
        self.reason = ""
        self.slot: Slot | None = None
        self.score = 0.0
        self.net: int | None = None  # expected net value in micro-USD, when the task has a value
        self.block: BudgetLine | None = None  # the first budget it would break, if any

    def drop(self, verdict: Verdict) -> bool:
        """Record a filter's verdict; True when the candidate fell."""
        if verdict is None:
            return False
        self.rejection, self.reason = verdict
        return True


def capable(task: Task, c: Cand, tokens: int, view: DecisionView) -> Verdict:
    """The first capability-type filter the candidate fails, if any (README step 3)."""
    m, req = c.model, task.requires
    if m.name in task.exclude_models:
        return Rejection.EXCLUDED, "excluded by the request"
    paused = view.paused.get(m.name)
    if paused is not None:
        return Rejection.EXCLUDED, f"paused: {paused}"
    if req.capabilities and not req.capabilities <= m.capabilities:
        missing = ", ".join(sorted(req.capabilities - m.capabilities))
        return Rejection.CAPABILITY, reasons.lacks(missing)
    if m.tier < req.min_tier:
        return Rejection.MIN_TIER, f"tier {m.tier} below required tier {req.min_tier}"
    if tokens > m.context_window:
        return Rejection.CONTEXT_WINDOW, (
            f"needs {tokens} tokens (input + output), context window is {m.context_window}"
        )
    uncallable = view.uncallable.get(m.name)
    if uncallable is not None:
        return Rejection.NO_CREDENTIALS, uncallable
    open_circuit = view.breakers.get(m.name)
    if open_circuit is not None:
        return Rejection.CIRCUIT_OPEN, open_circuit
    return None


def qualify(c: Cand, floor: float, critical: bool, exploration: Exploration) -> None:
    """Place the candidate on the floor's ladder (Level) and say why, in `c.note`."""
    sig = c.signal
    desc = sig.describe()
    if sig.lower_bound >= floor:
        if sig.proven(floor):
            c.level, c.note = Level.PROVEN, f"proven: {desc} meets floor {floor:.2f}"
            return
        short = f"{desc} not yet backed by enough observations to prove floor {floor:.2f}"
    else:
        short = f"{desc} below floor {floor:.2f}"
    c.level = Level.ESTIMATED if sig.mean >= floor else Level.BELOW
    if critical:
        c.note = f"unproven on a critical lane: {short}"
    elif sig.draw is None:
        why = "exploration share spent" if exploration is Exploration.SPENT else "no exploration"
        c.note = f"unproven: {short}; {why}"
    elif sig.draw >= floor:
        c.level, c.note = Level.EXPLORED, f"exploring: {short}; sampled {sig.draw:.2f}"
    else:
        c.note = f"unproven: {short}; sampled {sig.draw:.2f}"


def best_slots(slots: Iterable[Slot]) -> dict[str, Slot | None]:
    """Per offered model, its least-utilised free slot (None when every one is full)."""
    best: dict[str, Slot | None] = {}
    for s in slots:
        cur = best.get(s.model)
        if s.utilisation < 1.0 and (cur is None or s.utilisation < cur.utilisation):
            best[s.model] = s
        elif s.model not in best:
            best[s.model] = None
    return best


def slotted(c: Cand, best: dict[str, Slot | None]) -> Verdict:
    """Bind the candidate to its best free slot, or say why it has none."""
    name = c.model.name
    if name not in best:
        return Rejection.NO_SLOT, "no slot offered for this model"
    c.slot = best[name]
    return (Rejection.NO_SLOT, "every offered slot is full") if c.slot is None else None


def first_block(lines: Sequence[BudgetLine], amount_micros: int) -> BudgetLine | None:
    """The first budget (config order) the amount would break, else None."""
    for line in lines:
        if line.blocks(amount_micros):
            return line
    return None


def alternatives(cands: Sequence[Cand], annotate: bool) -> tuple[Alternative, ...]:
    """Every candidate in policy order with its score, cost and why it was (not) chosen.

    With `annotate`, candidates that passed the floor carry how they stand against it.
    """
    out = []
    for c in cands:
        reason = c.reason
        if annotate and c.note and c.rejection is not Rejection.QUALITY and c.rejection in _RANKED:
            reason = f"{reason}; {c.note}"
        out.append(Alternative(
            c.model.name, c.model.provider, c.model.tier, c.score, c.cost,
            c.rejection or Rejection.OUTSCORED, reason, c.quality,
            c.slot.slot_id if c.slot else None, c.net,
        ))
    return tuple(out)


_RANKED = frozenset({Rejection.CHOSEN, Rejection.FALLBACK, Rejection.OUTSCORED, Rejection.BUDGET})
