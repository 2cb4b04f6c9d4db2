"""The immutable view one decision is made over: every learned and stateful signal, read once.

The service takes this snapshot once per decision (budget headroom, breakers, health
demotion, learned quality, the EV threshold, exploration draws from its rng), so `decide` is a
pure function of (task, catalog, view): reproducible from its inputs and never re-drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from routing_sidecar.domain import MICROS_PER_USD, BudgetPeriod, BudgetRule
from routing_sidecar.quick_init import quick_init


class Exploration(StrEnum):
    """Whether this decision may try an unproven model, and if not, why."""

    ON = "on"
    OFF = "off"  # exploration disabled in the config
    SPENT = "spent"  # the task type's exploration share is used up


_KNOWN_MAX = 1024  # distinct catalog qualities kept as shared signals


@dataclass(frozen=True, slots=True)
class QualitySignal:
    """A model's learned quality on the task's type, as this decision sees it."""

    mean: float
    samples: float = 0.0
    lower_bound: float = 0.0
    # Enough observations back the estimate to prove a floor (min_samples_to_prove).
    backed: bool = False
    # Lower bound of the model's prior alone: a prior that meets a floor vouches for it.
    prior_lower_bound: float = 0.0
    # A Thompson draw from the posterior; None when this decision may not explore.
    draw: float | None = None

    @classmethod
    def known(cls, quality: float) -> QualitySignal:
        """A quality taken as certain: the catalog's, when nothing is learned."""
        # One object per distinct quality (the catalog's few), not one per candidate per
        # decision: the signal is immutable, so every decision may share it.
        signal = _KNOWN.get(quality)
        if signal is None:
            if len(_KNOWN) >= _KNOWN_MAX:
                _KNOWN.clear()
            signal = _KNOWN[quality] = cls(quality, 0.0, quality, True, quality)
        return signal

    def proven(self, floor: float) -> bool:
        """The lower bound meets the floor, backed by observations or vouched by the prior."""
        return self.lower_bound >= floor and (self.backed or self.prior_lower_bound >= floor)

    def describe(self) -> str:
        """'0.71 (n=3, lower bound 0.62)'; the bound is rounded down so it never reads as met."""
        low = math.floor(self.lower_bound * 100.0 + 1e-9) / 100.0
        return f"{self.mean:.2f} (n={self.samples:.0f}, lower bound {low:.2f})"


_KNOWN: dict[float, QualitySignal] = {}


@quick_init
@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One budget a candidate falls under, with what its bucket has used so far."""

    rule: BudgetRule
    key: str  # the concrete scope: global, project:alpha, task:T-42, ...
    used_micros: int  # spent + reserved in the rule's current period (per task: this task's)

    def blocks(self, amount_micros: int) -> bool:
        """True when reserving the amount would break the limit; a free call never does."""
        return amount_micros > 0 and self.used_micros + amount_micros > self.rule.limit_micros

    def reason(self, amount_micros: int) -> str:
        """'budget project:alpha/month exhausted' (or the per-task limit, in numbers)."""
        if self.rule.period is BudgetPeriod.TASK:
            return (f"budget task exceeded: {_usd(self.used_micros)} used + est. "
                    f"{_usd(amount_micros)} above the per-task limit "
                    f"{_usd(self.rule.limit_micros)}")
        return f"budget {self.key}/{self.rule.period.value} exhausted"


_EMPTY: Mapping[str, object] = MappingProxyType({})


def _empty() -> Mapping[str, object]:
    return _EMPTY


@quick_init
@dataclass(frozen=True, slots=True)
class DecisionView:
    """Everything beyond the task and the catalog that one decision depends on."""

    now: float = 0.0
    ev_threshold: float | None = None
    # Per model: learned quality on this task type; a model missing here is judged by its
    # catalog quality, taken as certain.
    quality: Mapping[str, QualitySignal] = field(default_factory=_empty)  # type: ignore[arg-type]
    # Per model: why it may not be routed now (circuit open, probe in flight).
    breakers: Mapping[str, str] = field(default_factory=_empty)  # type: ignore[arg-type]
    # Per model: score demotion for errors and slowness (0 when healthy).
    penalties: Mapping[str, float] = field(default_factory=_empty)  # type: ignore[arg-type]
    # Per model: every budget a decision for it would fall under, in config order.
    budgets: Mapping[str, tuple[BudgetLine, ...]] = field(default_factory=_empty)  # type: ignore[arg-type]
    # Per model: why an operator took it out of routing.
    paused: Mapping[str, str] = field(default_factory=_empty)  # type: ignore[arg-type]
    # Execute mode only, per model: why the sidecar cannot make the call itself (no adapter
    # for its provider, no key).
    uncallable: Mapping[str, str] = field(default_factory=_empty)  # type: ignore[arg-type]
    # Why budgets cannot be checked now (a fleet ledger out of reach); a task with a budget
    # is then refused, never run unchecked.
    budgets_unavailable: str | None = None
    exploration: Exploration = Exploration.OFF


EMPTY_VIEW = DecisionView()


def _usd(micros: int) -> str:
    return f"${micros / MICROS_PER_USD:.4f}"
