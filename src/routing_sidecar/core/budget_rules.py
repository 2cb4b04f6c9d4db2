"""Budget vocabulary: rules, calendar periods, scope keys and the ledger's row and result types.

Pure: no I/O and no clock; `now` and the time zone are passed in. Money is integer micro-USD.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from enum import StrEnum
from fnmatch import fnmatchcase

from routing_sidecar.config import RouterConfig, usd_to_micros
from routing_sidecar.domain import BudgetPeriod, BudgetState, ModelSpec, OnExceed

Bucket = tuple[str, BudgetPeriod, float]  # (concrete scope key, period, period start)


class EntryKind(StrEnum):
    """What a ledger row records; 'settle' rows count as spent, every other kind as reserved."""

    RESERVE = "reserve"
    SETTLE = "settle"
    RELEASE = "release"
    EXPIRE = "expire"


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """One configured budget; a '*' in the name applies it to each matching name separately."""

    scope: str
    period: BudgetPeriod
    limit_micros: int
    alert_at: float = 0.8
    on_exceed: OnExceed = OnExceed.REJECT

    def matches(self, key: str) -> bool:
        """True when this rule's scope pattern covers the concrete scope key."""
        if ":" not in self.scope or ":" not in key:
            return self.scope == key
        kind, _, name = self.scope.partition(":")
        key_kind, _, key_name = key.partition(":")
        return kind == key_kind and fnmatchcase(key_name, name)

    @property
    def alert_micros(self) -> int:
        """Usage at which the scope enters ALERT."""
        return math.ceil(self.alert_at * self.limit_micros)

    def state(self, used_micros: int) -> BudgetState:
        """EXCEEDED once no headroom is left, ALERT from the alert threshold, else OK."""
        if used_micros >= self.limit_micros:
            return BudgetState.EXCEEDED
        return BudgetState.ALERT if used_micros >= self.alert_micros else BudgetState.OK

    def thresholds(self) -> tuple[tuple[BudgetState, int], ...]:
        """The usage marks whose crossing raises an alert."""
        return (BudgetState.ALERT, self.alert_micros), (BudgetState.EXCEEDED, self.limit_micros)


@dataclass(frozen=True, slots=True)
class BudgetBlock:
    """Why an amount does not fit: the first rule it would break."""

    rule: BudgetRule
    scope: str
    period: BudgetPeriod
    reason: str

    @classmethod
    def of(cls, rule: BudgetRule, key: str, amount_micros: int) -> BudgetBlock:
        """A block naming the scope, with a sentence a person can read."""
        if rule.period is BudgetPeriod.TASK:
            reason = (f"budget task exceeded: estimate {amount_micros} above the per-task limit "
                      f"{rule.limit_micros} micro-USD")
        else:
            reason = f"budget {key}/{rule.period.value} exhausted"
        return cls(rule, key, rule.period, reason)


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


@dataclass(frozen=True, slots=True)
class LedgerChange:
    """Rows to persist and alerts raised by one mutation."""

    entries: tuple[LedgerEntry, ...] = ()
    alerts: tuple[BudgetAlert, ...] = ()


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """A reservation's outcome: blocked, or the rows to persist and the alerts raised."""

    block: BudgetBlock | None = None
    entries: tuple[LedgerEntry, ...] = ()
    alerts: tuple[BudgetAlert, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the amount was reserved."""
        return self.block is None


def rules_from_config(cfg: RouterConfig) -> tuple[BudgetRule, ...]:
    """The configured budgets as rules, in file order, limits in micro-USD."""
    out = []
    for b in cfg.budgets:
        default = BudgetPeriod.TASK if b.scope == "task" else BudgetPeriod.MONTH
        period = BudgetPeriod(b.period) if b.period else default
        limit = usd_to_micros(b.limit_usd)
        out.append(BudgetRule(b.scope, period, limit, b.alert_at, OnExceed(b.on_exceed)))
    return tuple(out)


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
    """Every concrete scope key one decision touches."""
    keys = ["global"]
    if project := labels.get("project"):
        keys.append(f"project:{project}")
    keys += [f"provider:{model.provider}", f"model:{model.name}", f"policy:{policy}"]
    if worker := labels.get("worker"):
        keys.append(f"worker:{worker}")
    return tuple(keys)


GOVERNED_CACHE_MAX = 65_536


class RuleBook:
    """Which rules govern which concrete scope keys; per period an exact scope beats a pattern."""

    def __init__(self, rules: Sequence[BudgetRule]) -> None:
        self.rules = tuple(rules)
        self._index = {id(r): i for i, r in enumerate(self.rules)}
        self._task = [r for r in self.rules if r.period is BudgetPeriod.TASK]
        self._cache: dict[str, tuple[BudgetRule, ...]] = {}
        self._governed: dict[
            tuple[str | None, str | None, str, str, str], tuple[tuple[BudgetRule, str], ...]
        ] = {}

    def for_key(self, key: str) -> tuple[BudgetRule, ...]:
        """The periodic rules governing a key (at most one per period), in config order."""
        cached = self._cache.get(key)
        if cached is None:
            chosen: dict[BudgetPeriod, BudgetRule] = {}
            for r in self.rules:
                if r.period is BudgetPeriod.TASK or not r.matches(key):
                    continue
                current = chosen.get(r.period)
                if current is None or (r.scope == key and current.scope != key):
                    chosen[r.period] = r
            cached = tuple(r for r in self.rules if chosen.get(r.period) is r)
            self._cache[key] = cached
        return cached

    def governed(self, labels: Mapping[str, str], model: ModelSpec,
                 policy: str) -> tuple[tuple[BudgetRule, str], ...]:
        """(rule, concrete key) for every budget a decision falls under, in config order."""
        # Only these four inputs shape the answer, and Route asks several times per decision.
        memo_key = (labels.get("project"), labels.get("worker"), model.name, model.provider,
                    policy)
        cached = self._governed.get(memo_key)
        if cached is not None:
            return cached
        out = [(r, "task") for r in self._task]
        for key in scopes_for(labels, model, policy):
            out += [(r, key) for r in self.for_key(key)]
        out.sort(key=lambda pair: self._index[id(pair[0])])
        if len(self._governed) >= GOVERNED_CACHE_MAX:
            self._governed.clear()
        self._governed[memo_key] = result = tuple(out)
        return result
