"""The in-memory budget ledger: lines, reserve, settle, release, expire, revert, restore.

Pure and deterministic: no I/O, no clock of its own (`now` and the time zone are passed in).
The ledger is authoritative while the process runs; every mutation returns a `LedgerChange`
with the `LedgerEntry` rows to persist, and summing those rows per bucket (kind 'settle' ->
spent, every other kind -> reserved) gives exactly the totals held here, which is how
`restore` rebuilds after a restart. A change whose rows fail to commit is undone with
`revert(change)`, which puts back exactly the reservations it opened or closed.

Buckets: calendar budgets (day, ISO week, month in the ledger's time zone) and the per-task
budget, one bucket per task id shared by every decision for that task, open for
`task_window_s` from the task's first reservation.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import tzinfo
from fnmatch import fnmatchcase

from routing_sidecar import errors
from routing_sidecar.core.budget_rules import (
    NO_CHANGE,
    Bucket,
    BudgetAlert,
    EntryKind,
    LedgerChange,
    LedgerEntry,
    Reservation,
    RuleBook,
    period_bounds,
)
from routing_sidecar.core.view import BudgetLine
from routing_sidecar.domain import BudgetPeriod, BudgetRule, BudgetState, BudgetStatus, ModelSpec

TASK = BudgetPeriod.TASK
DAY_S = 86_400.0


class _Line:
    """Mutable totals of one bucket."""

    __slots__ = ("end", "reserved", "spent")

    def __init__(self, end: float) -> None:
        self.end, self.spent, self.reserved = end, 0, 0


class Ledger:
    """Spent and reserved micro-USD per (scope key, period, period start)."""

    def __init__(self, rules: Sequence[BudgetRule], tz: tzinfo, *,
                 late_settle_s: float = DAY_S, task_window_s: float = 7 * DAY_S) -> None:
        self._tz = tz
        self._late_settle_s = late_settle_s
        self._task_window_s = task_window_s
        self._lines: dict[Bucket, _Line] = {}
        self._open: dict[str, Reservation] = {}
        # Expired unsettled reservations: an outcome arriving late still charges their buckets.
        self._expired: dict[str, Reservation] = {}
        self._tasks: dict[str, Bucket] = {}  # task key -> its current per-task bucket
        # (expires_at, id) of every reservation put in _open / _expired, soonest first, so an
        # expiry round looks only at what is due, not at every reservation held. An entry
        # whose reservation has left the table since (settled, released) is skipped.
        self._open_due: list[tuple[float, str]] = []
        self._expired_due: list[tuple[float, str]] = []
        self._alerted: set[tuple[BudgetRule, str, float, BudgetState]] = set()
        self._seen: set[str] = set()
        self._bounds: dict[BudgetPeriod, tuple[float, float]] = {}
        self._book = RuleBook(rules)
        # Bumped by every change to a bucket's totals or to which bucket a key uses: the
        # last answer of `lines` holds only while it is unchanged.
        self._generation = 0
        self._last_lines: tuple[object, str, float, int, tuple[BudgetLine, ...]] | None = None

    # -- queries ---------------------------------------------------------------------------

    def lines(self, labels: Mapping[str, str], model: ModelSpec, policy: str, task_id: str,
              now: float) -> tuple[BudgetLine, ...]:
        """Every budget a decision for `model` falls under, with what its bucket has used."""
        template = self._book.template(labels, model, policy)
        # A decision asks for every candidate, then again for the one it reserves, with the
        # same `now` and nothing changed in between; candidates under the same budgets share
        # one template, so all but the first get the answer already made.
        memo = self._last_lines
        if (memo is not None and memo[0] is template and memo[1] == task_id
                and memo[2] == now and memo[3] == self._generation):
            return memo[4]
        out = []
        lines = self._lines
        for rule, key in self._book.governed(labels, model, policy, task_id):
            # _find and _used inlined: this runs for every candidate of every decision.
            if rule.period is TASK:
                bucket = self._tasks.get(key)
                line = lines.get(bucket) if bucket is not None else None
                if line is not None and line.end <= now:
                    line = None
            else:
                line = lines.get((key, rule.period, self._current(rule.period, now)[0]))
            out.append(BudgetLine(rule, key, line.spent + line.reserved if line else 0))
        answer = tuple(out)
        self._last_lines = (template, task_id, now, self._generation, answer)
        return answer

    def statuses_for(self, labels: Mapping[str, str], model: ModelSpec, policy: str,
                     task_id: str, now: float) -> list[BudgetStatus]:
        """Standing of every budget one decision falls under."""
        return [self._status(r, key, now)
                for r, key in self._book.governed(labels, model, policy, task_id)]

    def status(self, now: float, scopes: Collection[str] = ()) -> list[BudgetStatus]:
        """Every calendar rule for every concrete scope seen; `scopes` filters by key or glob.

        A per-task rule is listed once under its rule scope `task`, with its limit only: its
        spend lives in one bucket per task (see `statuses_for`).
        """
        out = []
        for rule in self._book.rules:
            keys = [rule.scope]
            if "*" in rule.scope:
                keys = sorted(k for k in self._seen
                              if any(r is rule for r in self._book.for_key(k)))
            out += [self._status(rule, k, now) for k in keys
                    if not scopes or any(fnmatchcase(k, s) for s in scopes)]
        return out

    def holds(self, reservation_id: str) -> bool:
        """True while a reservation is open or expired but still chargeable."""
        return reservation_id in self._open or reservation_id in self._expired

    # -- mutations -------------------------------------------------------------------------

    def reserve(self, reservation_id: str, labels: Mapping[str, str], model: ModelSpec,
                policy: str, task_id: str, amount_micros: int, now: float,
                expires_at: float) -> tuple[BudgetLine | None, LedgerChange]:
        """Hold the amount on every budget the decision falls under, if it still fits.

        Returns the first budget it would break (and no change), or None and the change.
        """
        if amount_micros < 0:
            raise errors.InvalidArgument("amount_micros", "must not be negative")
        if self.holds(reservation_id):
            raise errors.AlreadyExists(f"reservation {reservation_id!r} already exists")
        for line in self.lines(labels, model, policy, task_id, now):
            if line.blocks(amount_micros):
                return line, NO_CHANGE
        buckets = [self._make(rule, key, now)
                   for rule, key in self._book.governed(labels, model, policy, task_id)]
        res = Reservation(amount_micros, tuple(dict.fromkeys(buckets)), expires_at, now)
        before = {b: self._used(b) for b in res.buckets}
        self._hold(reservation_id, res)
        rows = self._apply(EntryKind.RESERVE, reservation_id, res, amount_micros, now)
        return None, LedgerChange(tuple(rows), self._crossings(before, now), (reservation_id,))

    def settle(self, reservation_id: str, labels: Mapping[str, str], policy: str, task_id: str,
               charges: Sequence[tuple[ModelSpec, int]], at: float, now: float) -> LedgerChange:
        """Close the decision's reservation and charge each attempt to its own budgets.

        A fallback on another provider is that provider's spend, not the chosen model's. The
        charges land in the periods the reservation was made in; with no reservation held (a
        decision that reserved nothing, or one settled past the late window) in the periods of
        `at`, the decision's time. The caller makes this exactly-once (the store's outcome row);
        a duplicate is undone with `revert`.
        """
        if any(amount < 0 for _, amount in charges):
            raise errors.InvalidArgument("charges", "must not be negative")
        rows: list[LedgerEntry] = []
        closed: tuple[tuple[str, Reservation, bool], ...] = ()
        res = self._open.pop(reservation_id, None)
        if res is not None:
            closed = ((reservation_id, res, True),)
            rows += self._apply(EntryKind.RELEASE, reservation_id, res, -res.amount, now)
        elif (res := self._expired.pop(reservation_id, None)) is not None:
            closed = ((reservation_id, res, False),)
        when = res.at if res is not None else at
        held = {b[0]: b for b in res.buckets} if res is not None else {}
        totals: dict[Bucket, int] = {}
        for model, amount in charges:
            for rule, key in self._book.governed(labels, model, policy, task_id):
                bucket = held.get(key) if rule.period is TASK else None
                bucket = bucket or self._make(rule, key, when)
                totals[bucket] = totals.get(bucket, 0) + amount
        before = {b: self._used(b) for b in totals}
        expires = res.expires_at if res is not None else None
        for bucket, amount in totals.items():
            row = LedgerEntry(EntryKind.SETTLE, reservation_id, *bucket,
                              self._lines[bucket].end, amount, now, expires)
            self._add(row)
            rows.append(row)
        return LedgerChange(tuple(rows), self._crossings(before, now), (), closed)

    def release(self, reservation_id: str, now: float) -> LedgerChange:
        """Drop an open reservation without charging it; unknown ids are a no-op."""
        res = self._open.pop(reservation_id, None)
        if res is None:
            return NO_CHANGE
        rows = self._apply(EntryKind.RELEASE, reservation_id, res, -res.amount, now)
        return LedgerChange(tuple(rows), (), (), ((reservation_id, res, True),))

    def expire(self, now: float) -> LedgerChange:
        """Release every open reservation past its expiry; forget what no one can settle."""
        rows: list[LedgerEntry] = []
        closed = []
        for rid, res in _due(self._open_due, self._open, now):
            del self._open[rid]
            rows += self._apply(EntryKind.EXPIRE, rid, res, -res.amount, now)
            self._keep_expired(rid, res)
            closed.append((rid, res, True))
        for rid, _ in _due(self._expired_due, self._expired, now - self._late_settle_s):
            del self._expired[rid]
        self._forget_ended(now)
        return LedgerChange(tuple(rows), (), (), tuple(closed))

    def revert(self, change: LedgerChange) -> None:
        """Undo in memory a change whose rows failed to commit (or were a duplicate)."""
        for e in change.entries:
            self._add(e, sign=-1)
        for rid in change.opened:
            self._open.pop(rid, None)
        for rid, res, was_open in change.closed:
            self._expired.pop(rid, None)
            if was_open:
                self._hold(rid, res)
            else:
                self._keep_expired(rid, res)

    def restore(self, entries: Iterable[LedgerEntry]) -> None:
        """Replace all state with what the persisted rows say."""
        self._generation += 1
        for table in (self._lines, self._open, self._expired, self._tasks):
            table.clear()
        self._open_due.clear()
        self._expired_due.clear()
        self._alerted.clear()
        self._seen.clear()
        reserves: dict[str, list[LedgerEntry]] = {}
        closed: dict[str, set[EntryKind]] = {}
        for e in entries:
            self._add(e)
            if e.period is TASK:
                current = self._tasks.get(e.scope)
                if current is None or e.period_start > current[2]:
                    self._tasks[e.scope] = e.bucket
            else:
                self._seen.add(e.scope)
            if e.kind is EntryKind.RESERVE:
                reserves.setdefault(e.reservation_id, []).append(e)
            else:
                closed.setdefault(e.reservation_id, set()).add(e.kind)
        for rid, rows in reserves.items():
            buckets = tuple(dict.fromkeys(e.bucket for e in rows))
            res = Reservation(rows[0].amount_micros, buckets, rows[0].expires_at or 0.0,
                              rows[0].at)
            kinds = closed.get(rid, set())
            if not kinds:
                self._hold(rid, res)
            elif kinds == {EntryKind.EXPIRE}:
                self._keep_expired(rid, res)
        self._mark_alerted()

    def replace_rules(self, rules: Sequence[BudgetRule]) -> None:
        """Swap in reloaded rules, keeping every total and reservation."""
        self._generation += 1
        self._book = RuleBook(rules)
        self._mark_alerted()

    # -- internals -------------------------------------------------------------------------

    def _hold(self, rid: str, res: Reservation) -> None:
        self._open[rid] = res
        _push(self._open_due, self._open, rid, res)

    def _keep_expired(self, rid: str, res: Reservation) -> None:
        self._expired[rid] = res
        _push(self._expired_due, self._expired, rid, res)

    def _current(self, period: BudgetPeriod, now: float) -> tuple[float, float]:
        bounds = self._bounds.get(period)
        if bounds is None or not bounds[0] <= now < bounds[1]:
            bounds = self._bounds[period] = period_bounds(period, now, self._tz)
        return bounds

    def _find(self, rule: BudgetRule, key: str, now: float) -> Bucket | None:
        """The bucket the rule's key uses at `now`, if it exists yet."""
        if rule.period is TASK:
            bucket = self._tasks.get(key)
            if bucket is None or self._lines[bucket].end <= now:
                return None
            return bucket
        start, _ = self._current(rule.period, now)
        return key, rule.period, start

    def _make(self, rule: BudgetRule, key: str, now: float) -> Bucket:
        """The bucket the rule's key uses at `now`, created (and its line) when missing."""
        bucket = self._find(rule, key, now)
        if rule.period is TASK:
            if bucket is None:
                self._generation += 1
                bucket = (key, TASK, now)
                self._tasks[key] = bucket
                self._lines[bucket] = _Line(now + self._task_window_s)
            return bucket
        assert bucket is not None
        if bucket not in self._lines:
            self._generation += 1
            self._lines[bucket] = _Line(self._current(rule.period, now)[1])
        self._seen.add(key)
        return bucket

    def _used(self, bucket: Bucket) -> int:
        line = self._lines.get(bucket)
        return line.spent + line.reserved if line else 0

    def _status(self, rule: BudgetRule, key: str, now: float) -> BudgetStatus:
        bucket = self._find(rule, key, now) if ":" in key or rule.period is not TASK else None
        line = self._lines.get(bucket) if bucket else None
        spent, reserved = (line.spent, line.reserved) if line else (0, 0)
        if rule.period is TASK:
            return BudgetStatus(key, TASK, rule.limit_micros, spent, reserved,
                                rule.state(spent + reserved))
        start, end = self._current(rule.period, now)
        return BudgetStatus(key, rule.period, rule.limit_micros, spent, reserved,
                            rule.state(spent + reserved), start, end)

    def _add(self, e: LedgerEntry, sign: int = 1) -> None:
        self._generation += 1
        line = self._lines.get(e.bucket)
        if line is None:
            line = self._lines[e.bucket] = _Line(e.period_end)
        if e.kind is EntryKind.SETTLE:
            line.spent += sign * e.amount_micros
        else:
            line.reserved += sign * e.amount_micros

    def _apply(self, kind: EntryKind, rid: str, res: Reservation, amount: int,
               now: float) -> list[LedgerEntry]:
        """Add `amount` to each of the reservation's buckets; return the rows saying so."""
        rows = []
        for b in res.buckets:
            line = self._lines.get(b)
            end = line.end if line is not None else now
            rows.append(LedgerEntry(kind, rid, *b, end, amount, now, res.expires_at))
        for row in rows:
            self._add(row)
        return rows

    def _forget_ended(self, now: float) -> None:
        """Drop lines of periods over for good: no reservation left can charge them."""
        over = [b for b, line in self._lines.items() if line.end + self._late_settle_s <= now]
        if not over:  # the usual round: no period has been over long enough
            return
        referenced = {b for res in (*self._open.values(), *self._expired.values())
                      for b in res.buckets}
        ended = [b for b in over if b not in referenced]
        self._generation += 1
        for b in ended:
            del self._lines[b]
            if b[1] is TASK and self._tasks.get(b[0]) == b:
                del self._tasks[b[0]]
        if ended:
            gone = {(b[0], b[2]) for b in ended}
            self._alerted = {t for t in self._alerted if (t[1], t[2]) not in gone}

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


def _push(heap: list[tuple[float, str]], table: Mapping[str, Reservation], rid: str,
          res: Reservation) -> None:
    """Add the reservation's entry; rebuilt from the table once stale entries outnumber it."""
    heapq.heappush(heap, (res.expires_at, rid))
    if len(heap) > 2 * len(table) + 1024:  # settled ones linger until due: keep them bounded
        heap[:] = [(r.expires_at, k) for k, r in table.items()]
        heapq.heapify(heap)


def _due(heap: list[tuple[float, str]], table: Mapping[str, Reservation],
         until: float) -> list[tuple[str, Reservation]]:
    """Pop the heap's entries due by `until`; those whose reservation is still in `table`."""
    out: dict[str, Reservation] = {}  # a reservation put back by a revert has two entries
    while heap and heap[0][0] <= until:
        at, rid = heapq.heappop(heap)
        res = table.get(rid)
        if res is not None and res.expires_at == at:
            out.setdefault(rid, res)
    return list(out.items())
