"""The fleet ledger against a real redis-server: same books as the embedded one, never overspent."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from routing_sidecar import errors
from routing_sidecar.core.budget import Ledger
from routing_sidecar.core.budget_rules import LedgerEntry
from routing_sidecar.domain import BudgetPeriod, BudgetRule, ModelSpec
from routing_sidecar.storage.redis.ledger import RedisLedger
from tests.redis_server import RedisServer, redis_server

DAY, MONTH, TASK = BudgetPeriod.DAY, BudgetPeriod.MONTH, BudgetPeriod.TASK
GPT5 = ModelSpec("gpt-5", "openai", 3, 1_250_000, 10_000_000, 400_000, 60, 0.91)
HAIKU = ModelSpec("claude-haiku-4-5", "anthropic", 1, 1_000_000, 5_000_000, 200_000, 150, 0.72)
ALPHA = {"project": "alpha"}
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()
RULES = (BudgetRule("global", DAY, 4_000_000, 0.5), BudgetRule("project:*", MONTH, 3_000_000),
         BudgetRule("provider:openai", MONTH, 5_000_000), BudgetRule("task", TASK, 90_000))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as s:
        yield s


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(server.url)
    await r.flushall()
    try:
        yield r
    finally:
        await r.aclose()


def ledger(client: aioredis.Redis, *rules: BudgetRule) -> RedisLedger:
    return RedisLedger(client, rules or RULES, UTC)


def rows(entries: tuple[LedgerEntry, ...]) -> list[str]:
    """Rows in a comparable form. A per-task bucket's window is where the two ledgers differ on
    purpose: in Redis it is the key's time to live, not a start and end in the row."""
    return sorted(repr(dataclasses.replace(e, period_start=0.0, period_end=0.0)
                       if e.period is TASK else e) for e in entries)


def totals(statuses: list) -> dict[tuple[str, BudgetPeriod], tuple[int, int]]:  # type: ignore[type-arg]
    return {(s.scope, s.period): (s.spent_micros, s.reserved_micros) for s in statuses
            if s.period is not TASK}


async def test_the_same_churn_gives_the_same_books_as_the_embedded_ledger(
    client: aioredis.Redis,
) -> None:
    fleet, local = ledger(client), Ledger(RULES, UTC)
    rng = random.Random(11)
    now, ids = T0, []
    for i in range(300):
        now += rng.uniform(0, 400)
        op = rng.random()
        labels = rng.choice([ALPHA, {"project": "beta"}, {}])
        model = rng.choice([GPT5, HAIKU])
        task = f"task-{rng.randrange(20)}"
        if op < 0.5 or not ids:
            amount = rng.randint(0, 60_000)
            a = await fleet.reserve(f"r{i}", labels, model, "code", task, amount, now, now + 900)
            b = local.reserve(f"r{i}", labels, model, "code", task, amount, now, now + 900)
            assert (a[0] is None) == (b[0] is None), i
            assert rows(a[1].entries) == rows(b[1].entries)
            if b[0] is None:
                ids.append((f"r{i}", labels, task, now))
        elif op < 0.8:
            rid, lab, task, at = ids.pop(rng.randrange(len(ids)))
            charges = [(model, rng.randint(0, 70_000))]
            a_change = await fleet.settle(rid, lab, "code", task, charges, at, now)
            b_change = local.settle(rid, lab, "code", task, charges, at, now)
            assert rows(a_change.entries) == rows(b_change.entries)
        elif op < 0.9:
            rid, *_ = ids.pop(rng.randrange(len(ids)))
            assert rows((await fleet.release(rid, now)).entries) == rows(
                local.release(rid, now).entries)
        else:
            a_exp = await fleet.expire(now)
            b_exp = local.expire(now)
            assert rows(a_exp.entries) == rows(b_exp.entries)
            ids = [x for x in ids if local.holds(x[0]) and x[0] not in
                   {e.reservation_id for e in b_exp.entries}]
    for at in (T0, now):
        assert totals(await fleet.status(at)) == totals(local.status(at))
        for task in (f"task-{k}" for k in range(20)):
            fresh = ledger(client)
            await fresh.refresh()
            fleet_lines = fleet.lines({}, GPT5, "code", task, now)
            assert [x.used_micros for x in fleet_lines] == [
                x.used_micros for x in local.lines({}, GPT5, "code", task, now)]


async def test_sidecars_racing_for_one_budget_never_overspend(server: RedisServer,
                                                              client: aioredis.Redis) -> None:
    # Three sidecars (each its own connection pool and local copy), 300 concurrent
    # reservations against a budget that fits 50 of them.
    rule = BudgetRule("global", DAY, 50 * 7_777)
    clients = [aioredis.Redis.from_url(server.url) for _ in range(3)]
    try:
        cars = [RedisLedger(c, (rule,), UTC) for c in clients]

        async def one(i: int) -> bool:
            block, _ = await cars[i % 3].reserve(f"r{i}", ALPHA, HAIKU, "ops", f"t{i}", 7_777,
                                                 T0, T0 + 900)
            return block is None

        results = await asyncio.gather(*(one(i) for i in range(300)))
        assert sum(results) == 50
        [status] = await cars[0].status(T0)
        assert (status.reserved_micros, status.remaining_micros) == (50 * 7_777, 0)
    finally:
        for c in clients:
            await c.aclose()


async def test_reservation_and_settle_are_idempotent_across_sidecars(
    server: RedisServer, client: aioredis.Redis,
) -> None:
    other = aioredis.Redis.from_url(server.url)
    try:
        a, b = ledger(client), ledger(other)
        assert (await a.reserve("d1", ALPHA, GPT5, "code", "t", 500, T0, T0 + 900))[0] is None
        with pytest.raises(errors.AlreadyExists):
            await b.reserve("d1", ALPHA, GPT5, "code", "t", 500, T0, T0 + 900)
        first, second = await asyncio.gather(
            a.settle("d1", ALPHA, "code", "t", [(GPT5, 400)], T0, T0 + 5),
            b.settle("d1", ALPHA, "code", "t", [(GPT5, 400)], T0, T0 + 5))
        assert sorted([bool(first.entries), bool(second.entries)]) == [False, True]
        assert totals(await a.status(T0))[("global", DAY)] == (400, 0)
    finally:
        await other.aclose()


async def test_revert_of_a_failed_settle_across_a_month_boundary(client: aioredis.Redis) -> None:
    fleet = ledger(client, BudgetRule("global", MONTH, 10_000))
    last_minute = datetime(2026, 3, 31, 23, 59, tzinfo=UTC).timestamp()
    april = datetime(2026, 4, 1, 0, 1, tzinfo=UTC).timestamp()
    assert (await fleet.reserve("r1", {}, GPT5, "code", "t", 500, last_minute,
                                last_minute + 900))[0] is None
    failed = await fleet.settle("r1", {}, "code", "t", [(GPT5, 400)], last_minute, april)
    await fleet.revert(failed)
    assert totals(await fleet.status(last_minute)) == {("global", MONTH): (0, 500)}
    await fleet.settle("r1", {}, "code", "t", [(GPT5, 400)], last_minute, april + 60)
    assert totals(await fleet.status(last_minute)) == {("global", MONTH): (400, 0)}
    assert totals(await fleet.status(april)) == {("global", MONTH): (0, 0)}


async def test_revert_of_a_reservation_and_of_an_expiry(client: aioredis.Redis) -> None:
    fleet = ledger(client, BudgetRule("global", DAY, 10_000))
    _, change = await fleet.reserve("r1", {}, GPT5, "code", "t", 500, T0, T0 + 900)
    await fleet.revert(change)  # the audit row never committed
    assert totals(await fleet.status(T0)) == {("global", DAY): (0, 0)}
    assert not await client.exists("routing:{ledger}:res:r1")
    await fleet.reserve("r2", {}, GPT5, "code", "t", 300, T0, T0 + 900)
    expired = await fleet.expire(T0 + 901)
    assert [e.reservation_id for e in expired.entries] == ["r2"]
    await fleet.revert(expired)
    assert totals(await fleet.status(T0)) == {("global", DAY): (0, 300)}
    assert (await fleet.expire(T0 + 901)).entries == expired.entries


async def test_expiry_by_several_sidecars_happens_once(server: RedisServer,
                                                       client: aioredis.Redis) -> None:
    others = [aioredis.Redis.from_url(server.url) for _ in range(2)]
    try:
        cars = [ledger(c, BudgetRule("global", DAY, 100_000)) for c in (client, *others)]
        for i in range(20):
            await cars[i % 3].reserve(f"r{i}", {}, GPT5, "code", f"t{i}", 1_000, T0, T0 + 900)
        changes = await asyncio.gather(*(c.expire(T0 + 1_000) for c in cars))
        expired = [e.reservation_id for ch in changes for e in ch.entries]
        assert sorted(expired) == sorted(f"r{i}" for i in range(20))
        assert totals(await cars[0].status(T0)) == {("global", DAY): (0, 0)}
    finally:
        for c in others:
            await c.aclose()


async def test_a_stale_local_copy_is_caught_by_the_reservation(server: RedisServer,
                                                               client: aioredis.Redis) -> None:
    other = aioredis.Redis.from_url(server.url)
    try:
        rule = BudgetRule("project:alpha", MONTH, 1_000)
        a, b = ledger(client, rule), ledger(other, rule)
        assert b.lines(ALPHA, GPT5, "code", "t", T0)[0].used_micros == 0
        await a.reserve("x", ALPHA, GPT5, "code", "t1", 900, T0, T0 + 900)
        # b's copy still says 0 used, but the script knows better, and b learns it.
        block, change = await b.reserve("y", ALPHA, GPT5, "code", "t2", 200, T0, T0 + 900)
        assert block is not None and block.used_micros == 900 and change.entries == ()
        assert b.lines(ALPHA, GPT5, "code", "t2", T0)[0].used_micros == 900
        await a.release("x", T0 + 1)
        await b.refresh()
        assert b.lines(ALPHA, GPT5, "code", "t2", T0)[0].used_micros == 0
    finally:
        await other.aclose()


async def test_keys_share_one_slot_expire_and_scripts_come_back_after_a_flush(
    client: aioredis.Redis,
) -> None:
    fleet = ledger(client)
    await fleet.reserve("r1", ALPHA, GPT5, "code", "t", 500, T0, T0 + 900)
    keys = [k.decode() for k in await client.keys("*")]
    assert len({key_slot(k.encode()) for k in keys}) == 1, keys
    for k in keys:
        if ":b:" in k or ":res:" in k:
            assert await client.pttl(k) > 0, k
    await client.script_flush()
    assert (await fleet.reserve("r2", ALPHA, GPT5, "code", "t", 500, T0, T0 + 900))[0] is None


async def test_the_per_task_limit_is_shared_by_the_fleet(server: RedisServer,
                                                         client: aioredis.Redis) -> None:
    other = aioredis.Redis.from_url(server.url)
    try:
        rule = BudgetRule("task", TASK, 1_000)
        a, b = ledger(client, rule), ledger(other, rule)
        assert (await a.reserve("d1", {}, GPT5, "code", "T-42", 600, T0, T0 + 900))[0] is None
        block, _ = await b.reserve("d2", {}, GPT5, "code", "T-42", 600, T0, T0 + 900)
        assert block is not None and block.key == "task:T-42"
        assert (await b.reserve("d3", {}, GPT5, "code", "T-43", 600, T0, T0 + 900))[0] is None
    finally:
        await other.aclose()


def test_the_fixture_never_uses_the_standard_port(tmp_path: Path) -> None:
    with redis_server(tmp_path) as s:
        assert s.port != 6379
