"""Learned quality per (task type, model): a forgetting posterior, confidence and exploration.

Pure and deterministic: no I/O, no clock, no randomness of its own (a `random.Random` is passed
in for Thompson sampling).

Each (task type, model) holds a Beta posterior over a score y in 0..1: the caller's graded
quality when the outcome reports one, else 1 for success and 0 for failure. The prior is the
catalog's quality worth `prior_strength` observations, so a fresh sidecar starts from the
catalog. Evidence forgets: before each new observation the old evidence is multiplied by
`forget` (at most 1/(1-forget) observations' worth is ever held), so the estimate follows drift.

The 'able to do it' bar: with a quality floor (task min_quality or policy quality_floor) a model
qualifies when it is *proven*: the posterior's lower bound at `confidence` meets the floor and
either the catalog prior alone already meets it or at least `min_samples_to_prove`
observations back it. An unproven model is excluded on critical lanes and policies; elsewhere it
may be explored: a Thompson draw from its posterior reaching the floor admits it, as long as
the task type's explored share of decisions stays within `max_share`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import TypeVar

from routing_sidecar.config import LearningConfig
from routing_sidecar.domain import (
    ModelSpec,
    Policy,
    QualityEstimate,
    Rejection,
    Selection,
    Task,
)

Verdict = tuple[Rejection, str] | None
T = TypeVar("T")
_PASSED = frozenset({Rejection.CHOSEN, Rejection.FALLBACK, Rejection.OUTSCORED})

# Pass/fail observations the prior is worth when estimating how widely scores spread.
VARIANCE_PRIOR_WEIGHT = 2.0

@dataclass(frozen=True, slots=True)
class Qualification:
    """Whether a model clears a task's quality floor, why, and on which estimate."""

    ok: bool
    explored: bool
    reason: str
    estimate: QualityEstimate


@dataclass(frozen=True, slots=True)
class QualityRow:
    """One (task type, model)'s decayed evidence, as plain numbers for persistence."""

    task_type: str
    model: str
    evidence_for: float  # sum of y
    evidence_against: float  # sum of 1 - y
    successes: float
    failures: float
    graded: float  # observations that carried a quality
    evidence_sq: float | None = None  # sum of y squared; None in snapshots that predate it


@dataclass(frozen=True, slots=True)
class ShareRow:
    """One task type's decayed decision and exploration counts."""

    task_type: str
    decisions: float
    explored: float


@dataclass(frozen=True, slots=True)
class LearningSnapshot:
    """Everything a QualityBook holds; `restore(snapshot())` gives back the same state."""

    estimates: tuple[QualityRow, ...] = ()
    shares: tuple[ShareRow, ...] = ()


@dataclass(frozen=True, slots=True)
class LearnedStats:
    """One row for dashboards and the CLI."""

    task_type: str
    model: str
    mean: float
    samples: float
    lower_bound: float
    success_rate: float | None
    graded: float


class _Post:
    """Mutable decayed evidence of one (task type, model)."""

    __slots__ = ("a", "b", "f", "g", "q", "s")

    def __init__(self) -> None:
        self.a = self.b = self.s = self.f = self.g = self.q = 0.0


def is_critical(task: Task, policy: Policy, critical_lanes: Collection[str]) -> bool:
    """True when the policy is critical or the task's `lane` label names a critical lane."""
    if policy.critical:
        return True
    lane = task.labels.get("lane")
    return lane is not None and lane in critical_lanes


class QualityBook:
    """Learned quality per (task type, model), with bounded exploration per task type."""

    def __init__(self, cfg: LearningConfig, prior: Callable[[str], float]) -> None:
        self.cfg = cfg
        self._prior = prior
        self._k = cfg.prior_strength
        self._forget = cfg.forget
        self._z = NormalDist().inv_cdf(cfg.confidence)
        ex = cfg.exploration
        self._explore, self._max_share, self._min_samples = (
            ex.enabled, ex.max_share, ex.min_samples_to_prove)
        # The decayed weight that min_samples_to_prove fresh observations carry, so that
        # "5 observations" means five, forgetting included (less a hair for rounding).
        f = cfg.forget
        self._min_weight = (
            self._min_samples if f >= 1.0 else (1.0 - f ** self._min_samples) / (1.0 - f)
        ) - 1e-9
        self._max_types = cfg.max_task_types
        # Both maps are kept least recently updated first and bounded by max_task_types:
        # task types come from callers.
        self._types: dict[str, dict[str, _Post]] = {}
        self._shares: dict[str, list[float]] = {}

    # -- feeding ---------------------------------------------------------------------------

    def observe(self, task_type: str, model: str, success: bool,
                quality: float | None = None) -> None:
        """Fold one outcome in: y = quality when given (clamped to 0..1), else success."""
        y = float(success) if quality is None else min(1.0, max(0.0, quality))
        models = _touch(self._types, task_type, self._max_types, dict)
        p = models.get(model)
        if p is None:
            p = models[model] = _Post()
        f = self._forget
        p.a = p.a * f + y
        p.b = p.b * f + (1.0 - y)
        p.q = p.q * f + y * y
        p.s = p.s * f + success
        p.f = p.f * f + (not success)
        p.g = p.g * f + (quality is not None)

    def note_decision(self, task_type: str, explored: bool) -> None:
        """Count a routed decision, and whether its chosen model was admitted by exploration."""
        share = _touch(self._shares, task_type, self._max_types, lambda: [0.0, 0.0])
        f = self._forget
        share[0] = share[0] * f + 1.0
        share[1] = share[1] * f + explored

    # -- reading ---------------------------------------------------------------------------

    def estimate(self, task_type: str, model: str) -> QualityEstimate:
        """Posterior mean, effective sample count and lower bound at the configured confidence."""
        return self._estimate(*self._shape(task_type, model))

    def quality(self, task_type: str, model: ModelSpec) -> float:
        """Posterior mean, shaped as `Signals.quality` (the prior when nothing was learned)."""
        prior = self._prior(model.name)
        models = self._types.get(task_type)
        p = models.get(model.name) if models else None
        if p is None:
            return prior
        k = self._k
        total = k + p.a + p.b
        return (prior * k + p.a) / total if total > 0.0 else prior

    def can_explore(self, task_type: str) -> bool:
        """Whether one more explored decision keeps the task type within max_share."""
        if not self._explore:
            return False
        d, e = self._shares.get(task_type, (0.0, 0.0))
        f = self._forget
        return e * f + 1.0 <= self._max_share * (d * f + 1.0)

    def exploration_share(self, task_type: str) -> float:
        """Explored share of the task type's recent decisions."""
        d, e = self._shares.get(task_type, (0.0, 0.0))
        return e / d if d > 0.0 else 0.0

    def qualify(self, task_type: str, model: str, floor: float, *, critical: bool = False,
                rng: random.Random | None = None) -> Qualification:
        """Proven -> qualifies; unproven: excluded if critical, else maybe explored."""
        shape = self._shape(task_type, model)
        est = self._estimate(*shape)
        n = shape[3]
        desc = describe(est)
        if est.lower_bound >= floor:
            if n >= self._min_weight or self._vouched(model, floor):
                return Qualification(True, False, f"proven: {desc} meets floor {floor:.2f}", est)
            short = (f"{desc} needs {self._min_samples:g} observations to prove floor "
                     f"{floor:.2f}")
        else:
            short = f"{desc} below floor {floor:.2f}"
        if critical:
            return Qualification(False, False, f"unproven on a critical lane: {short}", est)
        if not self._explore or rng is None:
            return Qualification(False, False, f"unproven: {short}; no exploration", est)
        if not self.can_explore(task_type):
            return Qualification(
                False, False, f"unproven: {short}; exploration share spent", est)
        mean, var, total, _ = shape
        draw = rng.gauss(mean, math.sqrt(var / (total + 1.0)))
        if draw >= floor:
            return Qualification(True, True, f"exploring: {short}; sampled {draw:.2f}", est)
        return Qualification(False, False, f"unproven: {short}; sampled {draw:.2f}", est)

    def gate(self, critical: bool, rng: random.Random | None) -> QualityGate:
        """A `Signals.quality_check` for one decision."""
        return QualityGate(self, critical, rng)

    def stats(self) -> list[LearnedStats]:
        """Every learned (task type, model), ordered by task type then model."""
        rows = []
        for task_type in sorted(self._types):
            models = self._types[task_type]
            for model in sorted(models):
                p = models[model]
                est = self.estimate(task_type, model)
                runs = p.s + p.f
                rows.append(LearnedStats(task_type, model, est.mean, est.samples,
                                         est.lower_bound, p.s / runs if runs > 0 else None, p.g))
        return rows

    # -- persistence -----------------------------------------------------------------------

    def snapshot(self) -> LearningSnapshot:
        """Every estimate's evidence and every task type's exploration counts."""
        return LearningSnapshot(
            tuple(QualityRow(t, m, p.a, p.b, p.s, p.f, p.g, p.q)
                  for t, models in self._types.items() for m, p in models.items()),
            tuple(ShareRow(t, d, e) for t, (d, e) in self._shares.items()),
        )

    def restore(self, snap: LearningSnapshot) -> None:
        """Replace all state with the snapshot's."""
        self._types.clear()
        self._shares.clear()
        for r in snap.estimates:
            p = self._types.setdefault(r.task_type, {}).setdefault(r.model, _Post())
            p.a, p.b, p.s, p.f, p.g = (r.evidence_for, r.evidence_against, r.successes,
                                       r.failures, r.graded)
            # Snapshots from before squares were kept: treat the evidence as pass/fail.
            p.q = r.evidence_sq if r.evidence_sq is not None else r.evidence_for
        for s in snap.shares:
            self._shares[s.task_type] = [s.decisions, s.explored]

    # -- internals -------------------------------------------------------------------------

    def _shape(self, task_type: str, model: str) -> tuple[float, float, float, float]:
        """Posterior mean, variance of one score, total weight (prior included), observations.

        The mean weighs the catalog prior as `prior_strength` observations. The spread of a
        score is estimated separately, with the prior worth only VARIANCE_PRIOR_WEIGHT
        pass/fail observations (the widest spread its mean allows): graded scores usually
        cluster far tighter than pass/fail outcomes, and a handful of them should say so.
        """
        m0 = min(1.0, max(0.0, self._prior(model)))
        k = self._k
        models = self._types.get(task_type)
        p = models.get(model) if models else None
        a, n, q = (p.a, p.a + p.b, p.q) if p is not None else (0.0, 0.0, 0.0)
        total = k + n
        mean = (m0 * k + a) / total if total > 0.0 else m0
        nu = VARIANCE_PRIOR_WEIGHT
        var = m0 * (1.0 - m0)
        if n > 0.0:
            dm = a / n
            data_var = max(0.0, q / n - dm * dm)
            var = (nu * var + n * data_var + nu * n / (nu + n) * (dm - m0) ** 2) / (nu + n)
        return mean, var, total, n

    def _estimate(self, mean: float, var: float, total: float, n: float) -> QualityEstimate:
        spread = self._z * math.sqrt(var / (total + 1.0))
        return QualityEstimate(mean, n, min(1.0, max(0.0, mean - spread)))

    def _vouched(self, model: str, floor: float) -> bool:
        """True when the catalog prior alone proves the model for the floor."""
        prior = min(1.0, max(0.0, self._prior(model)))
        est = self._estimate(prior, prior * (1.0 - prior), self._k, 0.0)
        return est.lower_bound >= floor


class QualityGate:
    """One decision's quality check: pass as `Signals.quality_check`, then read its verdicts.

    After `select`, `explored(chosen.model)` tells the service what to pass to
    `QualityBook.note_decision`, and `annotate` adds to each surviving alternative's reason the
    estimate that qualified it (excluded ones already carry theirs).
    """

    __slots__ = ("_book", "_critical", "_rng", "verdicts")

    def __init__(self, book: QualityBook, critical: bool, rng: random.Random | None) -> None:
        self._book, self._critical, self._rng = book, critical, rng
        self.verdicts: dict[str, Qualification] = {}

    def __call__(self, task: Task, model: ModelSpec, floor: float) -> Verdict:
        """Qualify one candidate; None when it clears the floor."""
        q = self._book.qualify(task.task_type, model.name, floor, critical=self._critical,
                               rng=self._rng)
        self.verdicts[model.name] = q
        return None if q.ok else (Rejection.QUALITY, q.reason)

    def explored(self, model: str) -> bool:
        """True when this gate admitted `model` by exploration."""
        q = self.verdicts.get(model)
        return q is not None and q.explored

    def annotate(self, selection: Selection) -> Selection:
        """The selection with '; proven: 0.86 (n=40, ...)' appended to qualified survivors."""
        if not self.verdicts:
            return selection
        alts = tuple([
            replace(a, reason=f"{a.reason}; {q.reason}")
            if a.rejection in _PASSED and (q := self.verdicts.get(a.model)) is not None else a
            for a in selection.alternatives
        ])
        chosen = selection.chosen
        if chosen is not None:
            chosen = next(a for a in alts if a.model == chosen.model)
        return replace(selection, alternatives=alts, chosen=chosen)


def describe(est: QualityEstimate) -> str:
    """'0.71 (n=3, lower bound 0.62)'; the bound is rounded down so it never reads as met."""
    low = math.floor(est.lower_bound * 100.0 + 1e-9) / 100.0
    return f"{est.mean:.2f} (n={est.samples:.0f}, lower bound {low:.2f})"


def _touch(table: dict[str, T], key: str, limit: int, make: Callable[[], T]) -> T:
    """table[key], created with make() if absent, moved to most recent; evicts the oldest."""
    value = table.pop(key, None)
    if value is None:
        if len(table) >= limit:
            del table[next(iter(table))]
        value = make()
    table[key] = value
    return value
