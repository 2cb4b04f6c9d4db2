"""The fleet's budget ledger in Redis: one set of buckets for every sidecar, never overspent.

Same buckets and semantics as the embedded `core.budget.Ledger` (calendar periods in the
ledger's time zone, one per-task bucket per task id), but the totals live in Redis and every
check-and-change is one Lua script (ledger_scripts.py), so no interleaving of N sidecars can
take a bucket past its limit. Reservations are idempotent by decision id; settle, release,
expiry and revert are guarded by the reservation's state, so two sidecars never apply one twice.

Reads on the decision path (`lines`, `statuses_for`) come from a local copy of the bucket
totals, refreshed by every script's answer and by `refresh`; a decision made on a stale copy
is caught by the reservation script, which refuses what does not fit (the caller decides
again with fresh totals). So a Route costs one round trip: the reservation.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from fnmatch import fnmatchcase
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from routing_sidecar import errors
from routing_sidecar.core.budget_rules import (
    NO_CHANGE,
    Bucket,
    EntryKind,
    LedgerChange,
    LedgerEntry,
    Reservation,
    RuleBook,
    period_bounds,
)
from routing_sidecar.core.view import BudgetLine
from routing_sidecar.domain import BudgetPeriod, BudgetRule, BudgetStatus, ModelSpec
from routing_sidecar.storage.redis.ledger_scripts import APPLY, RESERVE

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")
TASK = BudgetPeriod.TASK
DAY_S = 86_400.0
HOT_FOR_S = 60.0  # a bucket not asked about for this long drops out of the refreshed set
MAX_CONFLICTS = 8


@dataclass(frozen=True, slots=True)
class _Target:
    """One bucket a change touches: its ledger identity and its Redis key and expiry."""

    rule: BudgetRule
    bucket: Bucket
    key: str
    end: float
    ttl_ms: int  # from the moment of the change that touches it
    nx: bool


def _reachable(
    fn: Callable[Concatenate[RedisLedger, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[RedisLedger, P], Coroutine[Any, Any, R]]:
    """Turn a lost or slow Redis into BudgetUnavailable, and note when it answers again."""

    @functools.wraps(fn)
    async def wrapper(self: RedisLedger, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            result = await fn(self, *args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            if self._down is None:
                log.warning("budget ledger unreachable", extra={"error": type(exc).__name__})
            self._down = f"the shared budget ledger is unreachable ({type(exc).__name__})"
            raise errors.BudgetUnavailable(self._down) from None
        if self._down is not None:
            log.info("budget ledger reachable again")
            self._down = None
        return result

    return cast("Callable[Concatenate[RedisLedger, P], Coroutine[Any, Any, R]]", wrapper)


@dataclass(frozen=True, slots=True)
class _Held:
    """A reservation read back from Redis, with the buckets it holds."""

    res: Reservation
    targets: tuple[_Target, ...]


class RedisLedger:
    """Spent and reserved micro-USD per bucket, shared through Redis."""

    def __init__(self, client: aioredis.Redis, rules: Sequence[BudgetRule], tz: tzinfo, *,
                 prefix: str = "routing:", late_settle_s: float = DAY_S,
                 task_window_s: float = 7 * DAY_S) -> None:
        self._r = client
        self._tz = tz
        self._late = late_settle_s
        self._task_window = task_window_s
        self._base = f"{prefix}{{ledger}}:"
        self._open = f"{self._base}open"
        self._scopes = f"{self._base}scopes"
        self._book = RuleBook(rules)
        self._reserve = client.register_script(RESERVE)
        self._apply = client.register_script(APPLY)
        self._totals: dict[str, tuple[int, int]] = {}  # bucket key -> last known (spent, reserved)
        self._hot: dict[str, float] = {}  # bucket key -> when a decision last read it
        self._down: str | None = None  # why Redis did not answer the last call, if it did not

    @property
    def unavailable(self) -> str | None:
        """Why the ledger could not be reached on its last call, or None."""
        return self._down

    def cached_status(self, now: float, scopes: Collection[str] = ()) -> list[BudgetStatus]:
        """Every rule's scopes this sidecar has seen, from the local copy (for gauges)."""
        out = []
        for key, (spent, reserved) in list(self._totals.items()):
            scope, period, start = self._parse_key(key)
            if period is TASK or (scopes and not any(fnmatchcase(scope, s) for s in scopes)):
                continue
            rule = self._rule(scope, period)
            if rule.limit_micros and period_bounds(period, now, self._tz)[0] == start:
                out.append(self._status(rule, scope, now, (spent, reserved)))
        return out

    # -- reads --------------------------------------------------------------------------------

    def lines(self, labels: Mapping[str, str], model: ModelSpec, policy: str, task_id: str,
              now: float) -> tuple[BudgetLine, ...]:
        """Every budget a decision for `model` falls under, with what its bucket last used."""
        out = []
        mark = time.monotonic()
        for rule, key in self._book.governed(labels, model, policy, task_id):
            target = self._target(rule, key, now)
            self._hot[target.key] = mark
            out.append(BudgetLine(rule, key, sum(self._totals.get(target.key, (0, 0)))))
        return tuple(out)

    def statuses_for(self, labels: Mapping[str, str], model: ModelSpec, policy: str,
                     task_id: str, now: float) -> list[BudgetStatus]:
        """Standing of every budget one decision falls under, from the local copy."""
        return [self._status(rule, key, now, self._totals.get(self._target(rule, key, now).key))
                for rule, key in self._book.governed(labels, model, policy, task_id)]

    @_reachable
    async def status(self, now: float, scopes: Collection[str] = ()) -> list[BudgetStatus]:
        """Every calendar rule for every concrete scope the fleet has used, read fresh."""
        seen = {s.decode() if isinstance(s, bytes) else s
                for s in await self._r.smembers(self._scopes)}
        pairs: list[tuple[BudgetRule, str]] = []
        for rule in self._book.rules:
            keys = [rule.scope]
            if "*" in rule.scope:
                keys = sorted(k for k in seen if any(r is rule for r in self._book.for_key(k)))
            pairs += [(rule, k) for k in keys
                      if not scopes or any(fnmatchcase(k, s) for s in scopes)]
        targets = [self._target(rule, key, now) for rule, key in pairs]
        await self._read([t.key for t in targets if t.rule.period is not TASK])
        return [self._status(rule, key, now,
                             self._totals.get(t.key) if rule.period is not TASK else None)
                for (rule, key), t in zip(pairs, targets, strict=True)]

    @_reachable
    async def refresh(self, keys: Collection[str] | None = None) -> None:
        """Re-read the buckets decisions asked about recently (or the given Redis keys)."""
        if keys is None:
            cutoff = time.monotonic() - HOT_FOR_S
            for k in [k for k, t in self._hot.items() if t < cutoff]:
                del self._hot[k]
                self._totals.pop(k, None)
            keys = list(self._hot)
        await self._read(list(keys))

    async def _read(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        pipe = self._r.pipeline(transaction=False)
        for k in keys:
            pipe.hmget(k, "s", "r")
        for k, (s, r) in zip(keys, await pipe.execute(), strict=True):
            self._totals[k] = (int(s or 0), int(r or 0))

    # -- changes ------------------------------------------------------------------------------

    @_reachable
    async def reserve(self, reservation_id: str, labels: Mapping[str, str], model: ModelSpec,
                      policy: str, task_id: str, amount_micros: int, now: float,
                      expires_at: float) -> tuple[BudgetLine | None, LedgerChange]:
        """Hold the amount on every budget the decision falls under, if it fits right now."""
        if amount_micros < 0:
            raise errors.InvalidArgument("amount_micros", "must not be negative")
        targets = [self._target(rule, key, now)
                   for rule, key in self._book.governed(labels, model, policy, task_id)]
        args: list[Any] = [reservation_id, amount_micros, repr(now), repr(expires_at),
                           self._res_ttl_ms(expires_at, now), len(targets)]
        for t in targets:
            scope = t.bucket[0] if t.rule.period is not TASK else ""
            args += [t.rule.limit_micros, t.ttl_ms, "nx" if t.nx else "", scope]
        reply = await self._reserve(keys=[self._res(reservation_id), self._open, self._scopes,
                                          *(t.key for t in targets)], args=args)
        tag = _text(reply[0])
        if tag == "dup":
            raise errors.AlreadyExists(f"reservation {reservation_id!r} already exists")
        if tag == "block":
            i = int(reply[1]) - 1
            self._totals[targets[i].key] = (int(reply[2]), int(reply[3]))
            line = BudgetLine(targets[i].rule, targets[i].bucket[0],
                              int(reply[2]) + int(reply[3]))
            return line, NO_CHANGE
        self._remember([t.key for t in targets], reply[1:])
        rows = tuple(LedgerEntry(EntryKind.RESERVE, reservation_id, *t.bucket, t.end,
                                 amount_micros, now, expires_at) for t in targets)
        return None, LedgerChange(rows, (), (reservation_id,))

    @_reachable
    async def settle(self, reservation_id: str, labels: Mapping[str, str], policy: str,
                     task_id: str, charges: Sequence[tuple[ModelSpec, int]], at: float,
                     now: float) -> LedgerChange:
        """Close the reservation and charge each attempt to its own budgets (see Ledger)."""
        if any(amount < 0 for _, amount in charges):
            raise errors.InvalidArgument("charges", "must not be negative")
        for _ in range(MAX_CONFLICTS):
            fields = await self._fields(reservation_id)
            state = fields.get("state", "")
            if state in ("settled", "released"):
                return NO_CHANGE  # another report (here or on another sidecar) settled it
            held = self._held(fields, now)
            when = float(fields["at"]) if "at" in fields else at
            deltas: dict[str, tuple[_Target, str, int]] = {}
            rows: list[LedgerEntry] = []
            if state == "open" and held is not None:
                for t in held.targets:
                    deltas[t.key + "/r"] = (t, "r", -held.res.amount)
                    rows.append(LedgerEntry(EntryKind.RELEASE, reservation_id, *t.bucket, t.end,
                                            -held.res.amount, now, held.res.expires_at))
            task_bucket = {t.bucket[0]: t for t in (held.targets if held else ())
                           if t.rule.period is TASK}
            spent: dict[str, tuple[_Target, int]] = {}
            for model, amount in charges:
                for rule, key in self._book.governed(labels, model, policy, task_id):
                    t = task_bucket.get(key) or self._target(rule, key, when, now)
                    prev = spent.get(t.key)
                    spent[t.key] = (t, (prev[1] if prev else 0) + amount)
            for k, (t, amount) in spent.items():
                deltas[k + "/s"] = (t, "s", amount)
                rows.append(LedgerEntry(EntryKind.SETTLE, reservation_id, *t.bucket, t.end,
                                        amount, now, held.res.expires_at if held else None))
            zop = "rem" if state == "open" else ""
            if await self._guarded(reservation_id, state, "settled", now, deltas, zop):
                closed = ((reservation_id, held.res, state == "open"),) if held else ()
                return LedgerChange(tuple(rows), (), (), closed)
        raise errors.StorageError(f"settle of {reservation_id!r} kept conflicting; retry")

    @_reachable
    async def release(self, reservation_id: str, now: float) -> LedgerChange:
        """Drop an open reservation without charging it; anything else is a no-op."""
        return await self._close(reservation_id, now, EntryKind.RELEASE, "released")

    @_reachable
    async def expire(self, now: float, limit: int = 500) -> LedgerChange:
        """Release open reservations past their expiry (any sidecar may; each happens once)."""
        due = await self._r.zrangebyscore(self._open, "-inf", repr(now), start=0, num=limit)
        rows: list[LedgerEntry] = []
        closed: list[tuple[str, Reservation, bool]] = []
        for raw in due:
            rid = _text(raw)
            change = await self._close(rid, now, EntryKind.EXPIRE, "expired")
            rows += change.entries
            closed += change.closed
        return LedgerChange(tuple(rows), (), (), tuple(closed))

    @_reachable
    async def revert(self, change: LedgerChange) -> None:
        """Undo a change whose audit rows failed to commit (or that was a duplicate)."""
        by_rid: dict[str, list[LedgerEntry]] = {}
        for e in change.entries:
            by_rid.setdefault(e.reservation_id, []).append(e)
        states = {rid: ("open" if was_open else "expired") for rid, _, was_open in change.closed}
        for rid, entries in by_rid.items():
            deltas: dict[str, tuple[_Target, str, int]] = {}
            for i, e in enumerate(entries):
                t = self._target_of(e)
                field = "s" if e.kind is EntryKind.SETTLE else "r"
                deltas[f"{t.key}/{field}/{i}"] = (t, field, -e.amount_micros)
            fields = await self._fields(rid)
            now = max(e.at for e in entries)
            if rid in change.opened:
                await self._guarded(rid, fields.get("state", ""), "", now, deltas, "rem")
            elif rid in states:
                res = next(r for x, r, _ in change.closed if x == rid)
                zop = f"add:{res.expires_at!r}" if states[rid] == "open" else ""
                await self._guarded(rid, fields.get("state", ""), states[rid], now, deltas, zop)
            else:  # a charge with no reservation behind it: drop its marker too
                await self._guarded(rid, fields.get("state", ""), "", now, deltas, "")

    def replace_rules(self, rules: Sequence[BudgetRule]) -> None:
        """Swap in reloaded rules; the totals stay in Redis."""
        self._book = RuleBook(rules)

    # -- internals ----------------------------------------------------------------------------

    async def _close(self, rid: str, now: float, kind: EntryKind, state: str) -> LedgerChange:
        for _ in range(MAX_CONFLICTS):
            fields = await self._fields(rid)
            held = self._held(fields, now)
            if fields.get("state") != "open" or held is None:
                return NO_CHANGE
            if kind is EntryKind.EXPIRE and held.res.expires_at > now:
                return NO_CHANGE
            deltas = {t.key: (t, "r", -held.res.amount) for t in held.targets}
            if await self._guarded(rid, "open", state, now, deltas, "rem"):
                rows = tuple(LedgerEntry(kind, rid, *t.bucket, t.end, -held.res.amount, now,
                                         held.res.expires_at) for t in held.targets)
                return LedgerChange(rows, (), (), ((rid, held.res, True),))
        raise errors.StorageError(f"closing {rid!r} kept conflicting; retry")

    async def _guarded(self, rid: str, expected: str, new: str, now: float,
                       deltas: Mapping[str, tuple[_Target, str, int]], zop: str) -> bool:
        """Apply the deltas if the reservation is still `expected`; False on a conflict."""
        items = list(deltas.values())
        args: list[Any] = [rid, expected, new, self._res_ttl_ms(now, now), len(items)]
        for t, field, delta in items:
            args += [field, delta, t.ttl_ms, "nx" if t.nx else ""]
        args.append(zop)
        reply = await self._apply(keys=[self._res(rid), self._open, *(t.key for t, _, _ in items)],
                                  args=args)
        if _text(reply[0]) == "conflict":
            return False
        self._remember([t.key for t, _, _ in items], reply[1:])
        return True

    def _remember(self, keys: Sequence[str], pairs: Sequence[object]) -> None:
        """Keep the (spent, reserved) a script answered for each bucket it touched."""
        for i, k in enumerate(keys):
            self._totals[k] = (int(pairs[2 * i]), int(pairs[2 * i + 1]))  # type: ignore[call-overload]

    async def _fields(self, rid: str) -> dict[str, str]:
        raw = await self._r.hgetall(self._res(rid))
        return {_text(k): _text(v) for k, v in raw.items()}

    def _held(self, fields: Mapping[str, str], now: float) -> _Held | None:
        """The reservation a hash describes, with its buckets, if it is one."""
        if "buckets" not in fields:
            return None
        targets = tuple(self._parse(k, now) for k in fields["buckets"].split("\n") if k)
        res = Reservation(int(fields["amount"]), tuple(t.bucket for t in targets),
                          float(fields["exp"]), float(fields["at"]))
        return _Held(res, targets)

    def _target(self, rule: BudgetRule, key: str, at: float, now: float | None = None
                ) -> _Target:
        """The bucket of (rule, key) holding the moment `at`, as touched at `now`."""
        now = at if now is None else now
        if rule.period is TASK:
            bucket: Bucket = (key, TASK, 0.0)
            end = at + self._task_window
            return _Target(rule, bucket, self._bucket_key(bucket), end,
                           self._ttl(end, now), True)
        start, end = period_bounds(rule.period, at, self._tz)
        bucket = (key, rule.period, start)
        return _Target(rule, bucket, self._bucket_key(bucket), end, self._ttl(end, now), False)

    def _target_of(self, e: LedgerEntry) -> _Target:
        rule = self._rule(e.scope, e.period)
        return _Target(rule, e.bucket, self._bucket_key(e.bucket), e.period_end,
                       self._ttl(e.period_end, e.at), e.period is TASK)

    def _parse_key(self, redis_key: str) -> Bucket:
        scope, period, start = redis_key.removeprefix(f"{self._base}b:").rsplit("|", 2)
        return scope, BudgetPeriod(period), float(start)

    def _parse(self, redis_key: str, now: float) -> _Target:
        scope, p, start_ = self._parse_key(redis_key)
        start = str(start_)
        end = (period_bounds(p, float(start), self._tz)[1] if p is not TASK
               else now + self._task_window)
        return _Target(self._rule(scope, p), (scope, p, float(start)), redis_key, end,
                       self._ttl(end, now), p is TASK)

    def _rule(self, scope: str, period: BudgetPeriod) -> BudgetRule:
        return next((r for r in self._book.for_key(scope) if r.period is period),
                    BudgetRule(scope, period, 0))

    def _ttl(self, end: float, now: float) -> int:
        """Milliseconds from `now` until a bucket ending at `end` may go (late window included)."""
        return max(1, int((end + self._late - now) * 1000))

    def _bucket_key(self, bucket: Bucket) -> str:
        scope, period, start = bucket
        return f"{self._base}b:{scope}|{period.value}|{start:.0f}"

    def _res(self, rid: str) -> str:
        return f"{self._base}res:{rid}"

    def _res_ttl_ms(self, expires_at: float, now: float) -> int:
        return int((max(expires_at, now) - now + self._late) * 1000) + 1

    def _status(self, rule: BudgetRule, key: str, now: float,
                totals: tuple[int, int] | None) -> BudgetStatus:
        spent, reserved = totals or (0, 0)
        state = rule.state(spent + reserved)
        if rule.period is TASK:
            return BudgetStatus(key, TASK, rule.limit_micros, spent, reserved, state)
        start, end = period_bounds(rule.period, now, self._tz)
        return BudgetStatus(key, rule.period, rule.limit_micros, spent, reserved, state,
                            start, end)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
