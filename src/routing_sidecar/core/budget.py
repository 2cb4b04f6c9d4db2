"""The in-memory budget ledger: check, reserve, settle, release, expire, restore.

Pure and deterministic: no I/O, no clock of its own (`now` and the time zone are passed in).
The ledger is authoritative while the process runs; every mutation returns the `LedgerEntry`
rows to persist, and summing those rows per bucket (kind 'settle' -> spent, every other kind ->
reserved) gives exactly the totals held here, which is how `restore` rebuilds after a restart.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from fnmatch import fnmatchcase

from routing_sidecar import errors
from routing_sidecar.core.budget_rules import (
    Bucket,
    BudgetAlert,
    BudgetBlock,
    BudgetRule,
    EntryKind,
    LedgerChange,
    LedgerEntry,
    ReserveResult,
    RuleBook,
    period_bounds,
    rules_from_config,
    scopes_for,
)
from routing_sidecar.domain import (
    BudgetPeriod,
    BudgetState,
    BudgetStatus,
    ModelSpec,
    Rejection,
    Task,
)

__all__ = [
    "BudgetAlert", "BudgetBlock", "BudgetRule", "EntryKind", "Ledger", "LedgerChange",
    "LedgerEntry", "ReserveResult", "period_bounds", "rules_from_config", "scopes_for",
]

TASK = BudgetPeriod.TASK
CostFilter = Callable[[Task, ModelSpec, int], tuple[Rejection, str] | None]


class _Line:
    """Mutable totals of one bucket."""

    __slots__ = ("end", "reserved", "spent")

    def __init__(self, end: float) -> None:
        self.end, self.spent, self.reserved = end, 0, 0


@dataclass(frozen=True, slots=True)
class _Reservation:
    amount: int
    buckets: tuple[Bucket, ...]
    expires_at: float
    at: float = 0.0  # when it was made: its charges land in that moment's periods


class Ledger:
    """Spent and reserved micro-USD per (scope key, period, period start)."""

    def __init__(self, rules: Sequence[BudgetRule], tz: tzinfo, *,
                 late_settle_s: float = 86_400.0) -> None:
        self._tz = tz
        self._late_settle_s = late_settle_s
        self._lines: dict[Bucket, _Line] = {}
        self._open: dict[str, _Reservation] = {}
        # Expired unsettled reservations: an outcome arriving late still charges their buckets.
        self._expired: dict[str, _Reservation] = {}
        self._alerted: set[tuple[BudgetRule, str, float, BudgetState]] = set()
        self._seen: set[str] = set()
        self._bounds: dict[BudgetPeriod, tuple[float, float]] = {}
        self._book = RuleBook(rules)

    # -- queries ---------------------------------------------------------------------------

    def check(self, labels: Mapping[str, str], model: ModelSpec, policy: str,
              amount_micros: int, now: float) -> BudgetBlock | None:
        """The first rule (in config order) the amount would break, else None."""
        for rule, key in self._book.governed(labels, model, policy):
            if self._over(rule, key, amount_micros, now):
                return BudgetBlock.of(rule, key, amount_micros)
        return None

    def as_filter(self, policy: str, now: float) -> CostFilter:
        """`check` shaped as a selection cost filter for one decision's policy and time."""
        def budget_filter(task: Task, model: ModelSpec, cost: int) -> tuple[Rejection, str] | None:
            block = self.check(task.labels, model, policy, cost, now)
            return None if block is None else (Rejection.BUDGET, block.reason)
        return budget_filter

    def statuses_for(self, labels: Mapping[str, str], model: ModelSpec, policy: str,
                     now: float) -> list[BudgetStatus]:
        """Standing of every budget one decision falls under."""
        return [self._status(r, key, now) for r, key in self._book.governed(labels, model, policy)]

    def status(self, now: float, scopes: Collection[str] = ()) -> list[BudgetStatus]:
        """Every rule for every concrete scope seen; `scopes` filters by key or glob."""
        out = []
        for rule in self._book.rules:
            keys = [rule.scope]
            if "*" in rule.scope:
                keys = sorted(k for k in self._seen
                              if any(r is rule for r in self._book.for_key(k)))
            out += [self._status(rule, k, now) for k in keys
                    if not scopes or any(fnmatchcase(k, s) for s in scopes)]
        return out

    # -- mutations -------------------------------------------------------------------------

    def reserve(self, reservation_id: str, labels: Mapping[str, str], model: ModelSpec,
                policy: str, amount_micros: int, now: float, expires_at: float) -> ReserveResult:
        """Hold the amount on every budget the decision falls under, if it still fits."""
        if amount_micros < 0:
            raise errors.InvalidArgument("amount_micros", "must not be negative")
        if reservation_id in self._open or reservation_id in self._expired:
            raise errors.AlreadyExists(f"reservation {reservation_id!r} already exists")
        governed = self._book.governed(labels, model, policy)
        for rule, key in governed:
            if self._over(rule, key, amount_micros, now):
                return ReserveResult(block=BudgetBlock.of(rule, key, amount_micros))
        buckets: list[Bucket] = []
        for rule, key in governed:
            if rule.period is not TASK:
                start, end = self._current(rule.period, now)
                buckets.append((key, rule.period, start))
                self._lines.setdefault(buckets[-1], _Line(end))
                self._seen.add(key)
        res = _Reservation(amount_micros, tuple(dict.fromkeys(buckets)), expires_at, now)
        before = {b: self._used(b) for b in res.buckets}
        self._open[reservation_id] = res
        rows = self._apply(EntryKind.RESERVE, reservation_id, res, amount_micros, now)
        return ReserveResult(None, tuple(rows), self._crossings(before, now))

    def settle(self, reservation_id: str, actual_micros: int, now: float) -> LedgerChange:
        """Move a reservation to spent at its actual cost, in the buckets it was reserved in.

        Idempotent: an unknown or already settled id changes nothing and returns no rows.
        """
        if actual_micros < 0:
            raise errors.InvalidArgument("actual_micros", "must not be negative")
        rows: list[LedgerEntry] = []
        res = self._open.pop(reservation_id, None)
        if res is None:
            res = self._expired.pop(reservation_id, None)
            if res is None:
                return LedgerChange()
            before = {b: self._used(b) for b in res.buckets}
        else:
            before = {b: self._used(b) for b in res.buckets}
            rows += self._apply(EntryKind.RELEASE, reservation_id, res, -res.amount, now)
        rows += self._apply(EntryKind.SETTLE, reservation_id, res, actual_micros, now)
        return LedgerChange(tuple(rows), self._crossings(before, now))

    def settle_attempts(self, reservation_id: str, labels: Mapping[str, str], policy: str,
                        charges: Sequence[tuple[ModelSpec, int]], now: float) -> LedgerChange:
        """Close a reservation and charge each attempt to its own model's and provider's budgets.

        A fallback on another provider is that provider's spend, not the chosen model's. The
        charges land in the periods the reservation was made in. Idempotent like `settle`: an
        unknown or already settled id changes nothing and returns no rows.
        """
        if any(amount < 0 for _, amount in charges):
            raise errors.InvalidArgument("charges", "must not be negative")
        rows: list[LedgerEntry] = []
        res = self._open.pop(reservation_id, None)
        if res is not None:
            rows += self._apply(EntryKind.RELEASE, reservation_id, res, -res.amount, now)
        else:
            res = self._expired.pop(reservation_id, None)
            if res is None:
                return LedgerChange()
        totals: dict[Bucket, int] = {}
        for model, amount in charges:
            for rule, key in self._book.governed(labels, model, policy):
                if rule.period is not TASK:
                    start, end = self._current(rule.period, res.at)
                    bucket = (key, rule.period, start)
                    self._lines.setdefault(bucket, _Line(end))
                    self._seen.add(key)
                    totals[bucket] = totals.get(bucket, 0) + amount
        before = {b: self._used(b) for b in totals}
        for bucket, amount in totals.items():
            row = LedgerEntry(EntryKind.SETTLE, reservation_id, *bucket, self._lines[bucket].end,
                              amount, now, res.expires_at)
            self._add(row)
            rows.append(row)
        return LedgerChange(tuple(rows), self._crossings(before, now))

    def release(self, reservation_id: str, now: float) -> list[LedgerEntry]:
        """Drop an open reservation without charging it; unknown ids are a no-op."""
        res = self._open.pop(reservation_id, None)
        if res is None:
            return []
        return self._apply(EntryKind.RELEASE, reservation_id, res, -res.amount, now)

    def rollback(self, reservation_id: str) -> None:
        """Forget a reservation whose rows never committed; there is nothing to persist."""
        res = self._open.pop(reservation_id, None)
        if res is not None:
            self._apply(EntryKind.RELEASE, reservation_id, res, -res.amount, 0.0)

    def expire(self, now: float) -> list[LedgerEntry]:
        """Release every open reservation past its expiry; return the rows to persist."""
        rows: list[LedgerEntry] = []
        for rid, res in list(self._open.items()):
            if res.expires_at <= now:
                del self._open[rid]
                rows += self._apply(EntryKind.EXPIRE, rid, res, -res.amount, now)
                self._expired[rid] = res
        horizon = now - self._late_settle_s
        for rid in [r for r, res in self._expired.items() if res.expires_at <= horizon]:
            del self._expired[rid]
        return rows

    def revert(self, entries: Iterable[LedgerEntry]) -> None:
        """Undo in memory the rows of a mutation whose commit failed, reopening what it closed."""
        groups: dict[str, list[LedgerEntry]] = {}
        for e in entries:
            self._add(e, sign=-1)
            groups.setdefault(e.reservation_id, []).append(e)
        for rid, rows in groups.items():
            kinds = {e.kind for e in rows}
            expires = rows[0].expires_at or 0.0
            closing = [e for e in rows if e.kind in (EntryKind.RELEASE, EntryKind.EXPIRE)]
            if EntryKind.RESERVE in kinds:
                self._open.pop(rid, None)
            elif closing:
                self._expired.pop(rid, None)
                buckets = tuple(dict.fromkeys(e.bucket for e in closing))
                self._open[rid] = _Reservation(
                    -closing[0].amount_micros, buckets, expires, closing[0].at)
            else:
                buckets = tuple(dict.fromkeys(e.bucket for e in rows))
                self._expired[rid] = _Reservation(0, buckets, expires, rows[0].at)

    def restore(self, entries: Iterable[LedgerEntry]) -> None:
        """Replace all state with what the persisted rows say."""
        self._lines.clear()
        self._open.clear()
        self._expired.clear()
        self._alerted.clear()
        self._seen.clear()
        reserves: dict[str, list[LedgerEntry]] = {}
        closed: dict[str, set[EntryKind]] = {}
        for e in entries:
            self._add(e)
            self._seen.add(e.scope)
            if e.kind is EntryKind.RESERVE:
                reserves.setdefault(e.reservation_id, []).append(e)
            else:
                closed.setdefault(e.reservation_id, set()).add(e.kind)
        for rid, rows in reserves.items():
            buckets = tuple(dict.fromkeys(e.bucket for e in rows))
            res = _Reservation(
                rows[0].amount_micros, buckets, rows[0].expires_at or 0.0, rows[0].at)
            kinds = closed.get(rid, set())
            if not kinds:
                self._open[rid] = res
            elif kinds == {EntryKind.EXPIRE}:
                self._expired[rid] = res
        self._mark_alerted()

    def replace_rules(self, rules: Sequence[BudgetRule]) -> None:
        """Swap in reloaded rules, keeping every total and reservation."""
        self._book = RuleBook(rules)
        self._mark_alerted()

    # -- internals -------------------------------------------------------------------------

    def _current(self, period: BudgetPeriod, now: float) -> tuple[float, float]:
        bounds = self._bounds.get(period)
        if bounds is None or not bounds[0] <= now < bounds[1]:
            bounds = self._bounds[period] = period_bounds(period, now, self._tz)
        return bounds

    def _used(self, bucket: Bucket) -> int:
        line = self._lines.get(bucket)
        return line.spent + line.reserved if line else 0

    def _over(self, rule: BudgetRule, key: str, amount: int, now: float) -> bool:
        # A free call never breaks a budget, even one a costly settle has already overrun.
        if amount <= 0:
            return False
        if rule.period is TASK:
            return amount > rule.limit_micros
        start, _ = self._current(rule.period, now)
        return self._used((key, rule.period, start)) + amount > rule.limit_micros

    def _status(self, rule: BudgetRule, key: str, now: float) -> BudgetStatus:
        if rule.period is TASK:
            return BudgetStatus(key, TASK, rule.limit_micros, 0, 0, BudgetState.OK)
        start, end = self._current(rule.period, now)
        line = self._lines.get((key, rule.period, start))
        spent, reserved = (line.spent, line.reserved) if line else (0, 0)
        return BudgetStatus(key, rule.period, rule.limit_micros, spent, reserved,
                            rule.state(spent + reserved), start, end)

    def _add(self, e: LedgerEntry, sign: int = 1) -> None:
        line = self._lines.setdefault(e.bucket, _Line(e.period_end))
        if e.kind is EntryKind.SETTLE:
            line.spent += sign * e.amount_micros
        else:
            line.reserved += sign * e.amount_micros

    def _apply(self, kind: EntryKind, rid: str, res: _Reservation, amount: int,
               now: float) -> list[LedgerEntry]:
        """Add `amount` to each of the reservation's buckets; return the rows saying so."""
        rows = [LedgerEntry(kind, rid, *b, self._lines[b].end, amount, now, res.expires_at)
                for b in res.buckets]
        for row in rows:
            self._add(row)
        return rows

    def _crossings(self, before: Mapping[Bucket, int], now: float) -> tuple[BudgetAlert, ...]:
        """Alerts for thresholds crossed upward, each once per rule, scope and period."""
        alerts = []
        for bucket, was in before.items():
            key, period, start = bucket
            used = self._used(bucket)
            for rule in self._book.for_key(key):
                for state, mark in rule.thresholds() if rule.period is period else ():
                    tag = (rule, key, start, state)
                    if was < mark <= used and tag not in self._alerted:
                        self._alerted.add(tag)
                        alerts.append(BudgetAlert(rule, key, period, start, state, used, now))
        return tuple(alerts)

    def _mark_alerted(self) -> None:
        """Count thresholds already passed as reported, so a restart or reload does not re-alert."""
        for (key, period, start), line in self._lines.items():
            for rule in self._book.for_key(key):
                for state, mark in rule.thresholds() if rule.period is period else ():
                    if 0 < mark <= line.spent + line.reserved:
                        self._alerted.add((rule, key, start, state))
