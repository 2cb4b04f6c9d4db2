"""Budget vocabulary: calendar periods, scope keys, which rules govern a key, the ledger's rows.

Pure: no I/O and no clock; `now` and the time zone are passed in. Money is integer micro-USD.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from enum import StrEnum

from routing_sidecar.domain import BudgetPeriod, BudgetRule, BudgetState, ModelSpec
from routing_sidecar.quick_init import quick_init

Bucket = tuple[str, BudgetPeriod, float]  # (concrete scope key, period, period start)
TASK_SCOPE = "task"


class EntryKind(StrEnum):
    """What a ledger row records; 'settle' rows count as spent, every other kind as reserved."""

    RESERVE = "reserve"
    SETTLE = "settle"
    RELEASE = "release"
    EXPIRE = "expire"


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """A scope's usage crossed its alert threshold (ALERT) or its limit (EXCEEDED)."""

    rule: BudgetRule
    scope: str
    period: BudgetPeriod
    period_start: float
    state: BudgetState
    used_micros: int
    at: float


@quick_init
@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One persisted ledger row; amount is signed micro-USD."""

    kind: EntryKind
    reservation_id: str
    scope: str
    period: BudgetPeriod
    period_start: float
    period_end: float
    amount_micros: int
    at: float
    expires_at: float | None = None

    @property
    def bucket(self) -> Bucket:
        """The (scope, period, period start) line this row adds to."""
        return self.scope, self.period, self.period_start


@quick_init
@dataclass(frozen=True, slots=True)
class Reservation:
    """An amount held on buckets until settled, released or expired."""

    amount: int
    buckets: tuple[Bucket, ...]
    expires_at: float
    at: float  # when it was made: its charges land in that moment's periods


@quick_init
@dataclass(frozen=True, slots=True)
class LedgerChange:
    """What one ledger mutation did: rows to persist, alerts raised, and how to undo it.

    `opened` are reservations it made; `closed` are (id, reservation, was it open) it settled,
    released or expired. `Ledger.revert` uses both to restore exactly the state before, should
    the rows fail to commit.
    """

    entries: tuple[LedgerEntry, ...] = ()
    alerts: tuple[BudgetAlert, ...] = ()
    opened: tuple[str, ...] = ()
    closed: tuple[tuple[str, Reservation, bool], ...] = ()


NO_CHANGE = LedgerChange()


def period_bounds(period: BudgetPeriod, now: float, tz: tzinfo) -> tuple[float, float]:
    """Epoch seconds [start, end) of the calendar day, ISO week or month holding `now` in tz."""
    day = datetime.fromtimestamp(now, tz).date()
    if period is BudgetPeriod.DAY:
        start, end = day, day + timedelta(days=1)
    elif period is BudgetPeriod.WEEK:
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    elif period is BudgetPeriod.MONTH:
        start = day.replace(day=1)
        end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    else:
        raise ValueError(f"period {period.value!r} has no calendar bounds")
    # Local midnights, not start + 86400: days around a DST change last 23 or 25 hours.
    return _midnight(start, tz), _midnight(end, tz)


def _midnight(d: date, tz: tzinfo) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=tz).timestamp()


def scopes_for(labels: Mapping[str, str], model: ModelSpec, policy: str) -> tuple[str, ...]:
    """Every concrete calendar scope key one decision touches."""
    keys = ["global"]
    if project := labels.get("project"):
        keys.append(f"project:{project}")
    keys += [f"provider:{model.provider}", f"model:{model.name}", f"policy:{policy}"]
    if worker := labels.get("worker"):
        keys.append(f"worker:{worker}")
    return tuple(keys)


def task_key(task_id: str) -> str:
    """The concrete key of one task's per-task budget: every decision for it shares it."""
    return f"{TASK_SCOPE}:{task_id}"


GOVERNED_CACHE_MAX = 65_536


class RuleBook:
    """Which rules govern which concrete scope keys; per period an exact scope beats a pattern."""

    def __init__(self, rules: Sequence[BudgetRule]) -> None:
        self.rules = tuple(rules)
        self._index = {id(r): i for i, r in enumerate(self.rules)}
        self._task = tuple(r for r in self.rules if r.period is BudgetPeriod.TASK)
        self._cache: dict[str, tuple[BudgetRule, ...]] = {}
        # (project, worker, model, provider, policy) -> the rules in config order with their
        # keys; None stands for the task's own key, filled in per call.
        self._governed: dict[
            tuple[str | None, str | None, str, str, str],
            tuple[tuple[BudgetRule, str | None], ...],
        ] = {}
        self._interned: dict[tuple[tuple[BudgetRule, str | None], ...],
                             tuple[tuple[BudgetRule, str | None], ...]] = {}

    def for_key(self, key: str) -> tuple[BudgetRule, ...]:
        """The rules governing a key (at most one per period), in config order."""
        cached = self._cache.get(key)
        if cached is None:
            if key.startswith(f"{TASK_SCOPE}:"):
                cached = self._task
            else:
                chosen: dict[BudgetPeriod, BudgetRule] = {}
                for r in self.rules:
                    if r.period is BudgetPeriod.TASK or not r.matches(key):
                        continue
                    current = chosen.get(r.period)
                    if current is None or (r.scope == key and current.scope != key):
                        chosen[r.period] = r
                cached = tuple(r for r in self.rules if chosen.get(r.period) is r)
            if len(self._cache) >= GOVERNED_CACHE_MAX:
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def template(self, labels: Mapping[str, str], model: ModelSpec,
                 policy: str) -> tuple[tuple[BudgetRule, str | None], ...]:
        """The rules a decision falls under with their keys, None for the task's own key.

        Equal templates are one object (interned), so models under the same budgets share it.
        """
        # Only these inputs shape the answer; Route asks once per candidate.
        memo_key = (labels.get("project"), labels.get("worker"), model.name, model.provider,
                    policy)
        template = self._governed.get(memo_key)
        if template is None:
            out: list[tuple[BudgetRule, str | None]] = [(r, None) for r in self._task]
            for key in scopes_for(labels, model, policy):
                out += [(r, key) for r in self.for_key(key)]
            out.sort(key=lambda pair: self._index[id(pair[0])])
            if len(self._governed) >= GOVERNED_CACHE_MAX:
                self._governed.clear()
                self._interned.clear()
            template = self._interned.setdefault(tuple(out), tuple(out))
            self._governed[memo_key] = template
        return template

    def governed(self, labels: Mapping[str, str], model: ModelSpec, policy: str,
                 task_id: str) -> tuple[tuple[BudgetRule, str], ...]:
        """(rule, concrete key) for every budget a decision falls under, in config order."""
        template = self.template(labels, model, policy)
        if not self._task:
            return template  # type: ignore[return-value]  # no None without task rules
        own = task_key(task_id)
        return tuple([(r, own if k is None else k) for r, k in template])
