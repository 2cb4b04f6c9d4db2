"""Learned quality per (task type, model), partially pooled across task types.

Pure: fed by outcomes, read through `signal` when the service builds a decision's view (a
`random.Random` is passed in for the Thompson draws; this module has none of its own).

Each (task type, model) holds decayed evidence of a score y in 0..1: the caller's graded
quality when the outcome reports one, else 1 for success and 0 for failure. Its prior is the
model's *pooled* estimate, worth `pool_strength` observations: the same evidence summed over
every task type (with its own forgetting), itself starting from the catalog's quality worth
`prior_strength` observations. So a task type never seen before starts from what the model did
on all the others, not only from the catalog, and a fresh sidecar starts from the catalog.
Evidence forgets: before each new observation the old evidence is multiplied by `forget`, so
every estimate follows drift.

The 'able to do it' bar: with a quality floor a model is *proven* when the posterior's lower
bound at `confidence` meets the floor and either its prior alone already meets it or at least
`min_samples_to_prove` observations back it. Exploration (bounded by `max_share` of a task
type's decisions) lets a decision try an unproven model whose Thompson draw reaches the floor.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from statistics import NormalDist
from typing import TypeVar

from routing_sidecar.core.view import Exploration, QualitySignal
from routing_sidecar.settings import LearningSettings

T = TypeVar("T")
POOLED = "*"  # the task type under which pooled rows are listed and snapshotted

# Pass/fail observations the prior is worth when estimating how widely scores spread.
VARIANCE_PRIOR_WEIGHT = 2.0
SIGNAL_CACHE_MAX = 16_384


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
    # Per model across task types; empty in snapshots that predate pooling (then rebuilt).
    pooled: tuple[QualityRow, ...] = ()


@dataclass(frozen=True, slots=True)
class LearnedStats:
    """One row for dashboards and the CLI; task type POOLED is the model across types."""

    task_type: str
    model: str
    mean: float
    samples: float
    lower_bound: float
    success_rate: float | None
    graded: float


# _Post's fields, for the code that reads them by name (a compiled class has no __slots__
# to read back).
_POST_FIELDS = ("a", "b", "f", "g", "q", "s")


class _Post:
    """Mutable decayed evidence of one (task type, model)."""

    __slots__ = _POST_FIELDS

    def __init__(self) -> None:
        self.a = self.b = self.s = self.f = self.g = self.q = 0.0

    def add(self, y: float, success: bool, graded: bool, forget: float) -> None:
        """Forget a little, then fold one observation in."""
        self.a = self.a * forget + y
        self.b = self.b * forget + (1.0 - y)
        self.q = self.q * forget + y * y
        self.s = self.s * forget + success
        self.f = self.f * forget + (not success)
        self.g = self.g * forget + graded

    def row(self, task_type: str, model: str) -> QualityRow:
        """The evidence as a persistable row."""
        return QualityRow(task_type, model, self.a, self.b, self.s, self.f, self.g, self.q)

    @classmethod
    def of(cls, r: QualityRow) -> _Post:
        """Evidence from a persisted row."""
        p = cls()
        p.a, p.b, p.s, p.f, p.g = (r.evidence_for, r.evidence_against, r.successes, r.failures,
                                   r.graded)
        # Snapshots from before squares were kept: treat the evidence as pass/fail.
        p.q = r.evidence_sq if r.evidence_sq is not None else r.evidence_for
        return p


class QualityBook:
    """Learned quality per (task type, model), with bounded exploration per task type."""

    def __init__(self, settings: LearningSettings, prior: Callable[[str], float]) -> None:
        self.settings = settings
        self._prior = prior
        self._k = settings.prior_strength
        self._kt = settings.pool_strength
        self._forget = settings.forget
        self._z = NormalDist().inv_cdf(settings.confidence)
        ex = settings.exploration
        self._explore, self._max_share = ex.enabled, ex.max_share
        # The decayed weight that min_samples_to_prove fresh observations carry, so that
        # "5 observations" means five, forgetting included (less a hair for rounding).
        f, n = settings.forget, ex.min_samples_to_prove
        self._min_weight = (n if f >= 1.0 else (1.0 - f ** n) / (1.0 - f)) - 1e-9
        self._max_types = settings.max_task_types
        # Both maps are kept least recently updated first and bounded by max_task_types:
        # task types come from callers. The pool is per catalog model, so bounded already.
        self._types: dict[str, dict[str, _Post]] = {}
        self._shares: dict[str, list[float]] = {}
        self._pool: dict[str, _Post] = {}
        # Task types asked about with no evidence here: the fleet may know them.
        self._unseen: dict[str, None] = {}
        # Signals already worked out, per (task type, model), valid while the model's version
        # stands: any evidence about a model (its pool included) moves its version on.
        self._signals: dict[tuple[str, str], tuple[int, QualitySignal, float]] = {}
        self._versions: dict[str, int] = {}

    # -- feeding ---------------------------------------------------------------------------

    def observe(self, task_type: str, model: str, success: bool,
                quality: float | None = None) -> None:
        """Fold one outcome in: y = quality when given (clamped to 0..1), else success."""
        y = score_of(success, quality)
        graded = quality is not None
        models = _touch(self._types, task_type, self._max_types, dict)
        for table in (models, self._pool):
            p = table.get(model)
            if p is None:
                p = table[model] = _Post()
            p.add(y, success, graded, self._forget)
        self._versions[model] = self._versions.get(model, 0) + 1

    def note_decision(self, task_type: str, explored: bool) -> None:
        """Count a routed decision, and whether its chosen model was admitted by exploration."""
        share = _touch(self._shares, task_type, self._max_types, lambda: [0.0, 0.0])
        f = self._forget
        share[0] = share[0] * f + 1.0
        share[1] = share[1] * f + explored

    # -- reading ---------------------------------------------------------------------------

    def exploration(self, task_type: str) -> Exploration:
        """Whether one more explored decision keeps the task type within max_share."""
        if not self._explore:
            return Exploration.OFF
        d, e = self._shares.get(task_type, (0.0, 0.0))
        f = self._forget
        return Exploration.ON if e * f + 1.0 <= self._max_share * (d * f + 1.0) \
            else Exploration.SPENT

    def exploration_share(self, task_type: str) -> float:
        """Explored share of the task type's recent decisions."""
        d, e = self._shares.get(task_type, (0.0, 0.0))
        return e / d if d > 0.0 else 0.0

    def signal(self, task_type: str, model: str,
               rng: random.Random | None = None) -> QualitySignal:
        """The model's estimate on the task type for a decision's view; a draw when rng given."""
        key = (task_type, model)
        version = self._versions.get(model, 0)
        cached = self._signals.get(key)
        if cached is not None and cached[0] == version:
            base, sd = cached[1], cached[2]
        else:
            base, sd = self._signal(task_type, model)
            if len(self._signals) >= SIGNAL_CACHE_MAX:
                self._signals.clear()
            self._signals[key] = (version, base, sd)
        if rng is None:
            return base
        return QualitySignal(base.mean, base.samples, base.lower_bound, base.backed,
                             base.prior_lower_bound, rng.gauss(base.mean, sd))

    def _signal(self, task_type: str, model: str) -> tuple[QualitySignal, float]:
        """The signal without a draw, and the spread a Thompson draw takes."""
        mean, var, total, n = self._shape(task_type, model)
        sd = math.sqrt(var / (total + 1.0))
        models = self._types.get(task_type)
        prior_mean = self._pooled(model, models.get(model) if models else None)[0]
        prior_spread = self._z * math.sqrt(prior_mean * (1.0 - prior_mean) / (self._kt + 1.0))
        return QualitySignal(mean, n, _clamp(mean - self._z * sd), n >= self._min_weight,
                             _clamp(prior_mean - prior_spread)), sd

    def task_types(self) -> list[str]:
        """Task types this book holds evidence for, least recently updated first."""
        return list(self._types)

    def drain_unseen(self) -> list[str]:
        """Task types decided on with no evidence here since the last call."""
        out = list(self._unseen)
        self._unseen.clear()
        return out

    def merge(self, rows: Iterable[QualityRow], pooled: Iterable[QualityRow]) -> None:
        """Take the fleet's evidence for these (task type, model)s and pools, replacing ours.

        The fleet's sums hold this sidecar's own observations too (it pushed them first), so
        replacing rather than adding counts every outcome once.
        """
        for r in rows:
            models = self._types.get(r.task_type)
            if models is None:
                models = _touch(self._types, r.task_type, self._max_types, dict)
            models[r.model] = _Post.of(r)
            self._versions[r.model] = self._versions.get(r.model, 0) + 1
        for r in pooled:
            self._pool[r.model] = _Post.of(r)
            self._versions[r.model] = self._versions.get(r.model, 0) + 1

    def mean(self, task_type: str, model: str) -> float:
        """Posterior mean of the model on the task type (its pooled estimate if unseen)."""
        return self._shape(task_type, model)[0]

    def stats(self) -> list[LearnedStats]:
        """Every learned (task type, model), by task type then model; pooled rows first."""
        rows = [self._stats(POOLED, m, p, self._pooled(m)) for m, p in sorted(self._pool.items())]
        for task_type in sorted(self._types):
            models = self._types[task_type]
            for model in sorted(models):
                rows.append(self._stats(task_type, model, models[model],
                                        self._shape(task_type, model)))
        return rows

    # -- persistence -----------------------------------------------------------------------

    def snapshot(self) -> LearningSnapshot:
        """Every estimate's evidence, the pool, and every task type's exploration counts."""
        return LearningSnapshot(
            tuple(p.row(t, m) for t, models in self._types.items() for m, p in models.items()),
            tuple(ShareRow(t, d, e) for t, (d, e) in self._shares.items()),
            tuple(p.row(POOLED, m) for m, p in self._pool.items()),
        )

    def restore(self, snap: LearningSnapshot) -> None:
        """Replace all state with the snapshot's (pooling an older snapshot's rows)."""
        self._types.clear()
        self._shares.clear()
        self._pool.clear()
        self._signals.clear()
        for r in snap.estimates:
            self._types.setdefault(r.task_type, {})[r.model] = _Post.of(r)
        for s in snap.shares:
            self._shares[s.task_type] = [s.decisions, s.explored]
        for r in snap.pooled:
            self._pool[r.model] = _Post.of(r)
        if not snap.pooled:
            for models in self._types.values():
                for model, p in models.items():
                    pool = self._pool.setdefault(model, _Post())
                    for attr in _POST_FIELDS:
                        setattr(pool, attr, getattr(pool, attr) + getattr(p, attr))

    # -- internals -------------------------------------------------------------------------

    def _pooled(self, model: str, own: _Post | None = None) -> tuple[float, float, float, float]:
        """The model across task types, from the catalog prior worth prior_strength.

        With `own` (a task type's evidence), that evidence is left out, so a task type's own
        outcomes count once in its estimate, not again through its prior.
        """
        pool = self._pool.get(model)
        if own is not None and pool is not None:
            rest = _Post()
            rest.a, rest.b, rest.q = (max(0.0, pool.a - own.a), max(0.0, pool.b - own.b),
                                      max(0.0, pool.q - own.q))
            pool = rest
        return _shape(_clamp(self._prior(model)), self._k, pool)

    def _shape(self, task_type: str, model: str) -> tuple[float, float, float, float]:
        """Posterior mean, variance of one score, total weight (prior included), observations."""
        models = self._types.get(task_type)
        if models is None and task_type not in self._unseen and len(self._unseen) < 1024:
            self._unseen[task_type] = None
        own = models.get(model) if models else None
        return _shape(self._pooled(model, own)[0], self._kt, own)

    def _stats(self, task_type: str, model: str, p: _Post,
               shape: tuple[float, float, float, float]) -> LearnedStats:
        mean, var, total, n = shape
        lower = _clamp(mean - self._z * math.sqrt(var / (total + 1.0)))
        runs = p.s + p.f
        return LearnedStats(task_type, model, mean, n, lower,
                            p.s / runs if runs > 0 else None, p.g)


def score_of(success: bool, quality: float | None) -> float:
    """What one outcome says of a model: its graded quality (clamped to 0..1), else success."""
    return float(success) if quality is None else min(1.0, max(0.0, quality))


def _shape(m0: float, k: float, p: _Post | None) -> tuple[float, float, float, float]:
    """Mean, variance of one score, total weight and observations of evidence over a prior.

    The mean weighs the prior m0 as `k` observations. The spread of a score is estimated
    separately, with the prior worth only VARIANCE_PRIOR_WEIGHT pass/fail observations (the
    widest spread its mean allows): graded scores usually cluster far tighter than pass/fail
    outcomes, and a handful of them should say so.
    """
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


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


def _touch(table: dict[str, T], key: str, limit: int, make: Callable[[], T]) -> T:
    """table[key], created with make() if absent, moved to most recent; evicts the oldest."""
    value = table.pop(key, None)
    if value is None:
        if len(table) >= limit:
            del table[next(iter(table))]
        value = make()
    table[key] = value
    return value
