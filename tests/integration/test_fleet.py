"""Fleet mode through real gRPC: sidecars sharing budgets, breakers and learning on one Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf.duration_pb2 import Duration

from routing_sidecar.app import Sidecar
from routing_sidecar.config import parse_config
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.redis_server import RedisServer, redis_server


def model(provider: str, price: float, quality: float) -> dict[str, Any]:
    return {"provider": provider, "tier": 1, "input_per_mtok": price, "output_per_mtok": price,
            "context_window": 100_000, "tokens_per_s": 100, "quality": quality}


def fleet_config(tmp: Path, name: str, redis_url: str, **fleet: Any) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:0", "grace_period_s": 1},
        "store": {"path": str(tmp / f"{name}.db")},
        "telemetry": {"exporter": "none", "admin_listen": ""},
        "models": {"flaky": model("flakyco", 0.5, 0.8), "steady": model("steadyco", 20.0, 0.8)},
        "policies": {"pair": {"objective": "cost_speed", "models": ["flaky", "steady"],
                              "fallbacks": 1}},
        "default_policy": "pair",
        # 2,000 tokens at $0.50/M = $0.001 a decision on flaky: the budget fits 50.
        "budgets": [{"scope": "global", "period": "day", "limit_usd": 0.05}],
        "health": {"breaker": {"consecutive_failures": 3, "cooldown_s": 30}},
        "fleet": {"redis_url": redis_url, "outbox_path": str(tmp / f"{name}-outbox.db"),
                  "sync_interval_s": 0.1, **fleet},
    }


Start = Callable[..., Awaitable[tuple[Sidecar, pb_grpc.RouterStub]]]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis", appendonly=True) as s:
        yield s


@pytest.fixture
async def start(tmp_path: Path, redis: RedisServer) -> AsyncIterator[Start]:
    opened: list[tuple[Sidecar, grpc.aio.Channel]] = []

    async def go(name: str, **fleet: Any) -> tuple[Sidecar, pb_grpc.RouterStub]:
        raw = fleet_config(tmp_path, name, redis.url, **fleet)
        car = Sidecar(parse_config(yaml.safe_dump(raw), name))
        await car.start()
        ch = grpc.aio.insecure_channel(car.address)
        opened.append((car, ch))
        return car, pb_grpc.RouterStub(ch)

    yield go
    for car, ch in opened:
        await ch.close()
        await car.stop()


def task(i: int, **kw: Any) -> pb.RouteRequest:
    return pb.RouteRequest(task_id=f"t-{i}", task_type="job", estimated_input_tokens=1_000,
                           max_output_tokens=1_000, policy="pair", **kw)


def attempt(d: pb.Decision, status: int = pb.ATTEMPT_STATUS_SUCCESS) -> pb.Attempt:
    return pb.Attempt(model=d.model, status=status, input_tokens=1_000, output_tokens=1_000,
                      duration=Duration(seconds=1))


async def global_budget(stub: pb_grpc.RouterStub) -> pb.BudgetStatus:
    reply = await stub.GetBudgetStatus(pb.BudgetQuery(scopes=["global"]))
    [status] = reply.budgets
    return status


async def test_three_sidecars_share_one_budget_and_never_overspend(start: Start) -> None:
    stubs = [(await start(f"car{i}"))[1] for i in range(3)]
    decisions = await asyncio.gather(*(stubs[i % 3].Route(task(i)) for i in range(300)))
    routed = [(i, d) for i, d in enumerate(decisions) if d.status == pb.DECISION_STATUS_ROUTED]
    assert 45 <= len(routed) <= 50
    assert {d.reason_code for d in decisions if d.status != pb.DECISION_STATUS_ROUTED} == {
        pb.REASON_CODE_BUDGET_EXHAUSTED}
    for stub in stubs:  # every sidecar reads the same shared figure
        status = await global_budget(stub)
        assert status.reserved_micros == 1_000 * len(routed) <= status.limit_micros
    # Each audit trail is its own SQLite file here, so each sidecar settles its own decisions
    # (with one PostgreSQL store, any sidecar can settle any decision: test_postgres_fleet).
    for i, d in routed:
        await stubs[i % 3].ReportOutcome(
            pb.Outcome(decision_id=d.decision_id, attempts=[attempt(d)], success=True))
    status = await global_budget(stubs[2])
    assert (status.spent_micros, status.reserved_micros) == (1_000 * len(routed), 0)


async def test_a_burst_beyond_the_redis_pool_waits_for_a_connection(start: Start) -> None:
    _, stub = await start("small", max_connections=2, socket_timeout_s=5)
    decisions = await asyncio.gather(*(stub.Route(task(i)) for i in range(40)))
    assert {d.status for d in decisions} == {pb.DECISION_STATUS_ROUTED}
    assert (await global_budget(stub)).reserved_micros == 1_000 * 40


async def test_a_breaker_opened_through_one_sidecar_reaches_another_within_100_ms(
    start: Start,
) -> None:
    (_, a), (_, b) = await start("a"), await start("b")
    for i in range(3):
        d = await a.Route(task(i))
        assert d.model == "flaky"
        await a.ReportOutcome(pb.Outcome(decision_id=d.decision_id, success=False,
                                         attempts=[attempt(d, pb.ATTEMPT_STATUS_TIMEOUT)]))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while True:
        d = await b.Route(task(100, dry_run=True))
        if d.model == "steady":
            break
        assert loop.time() - t0 < 0.1, "b still routes to the model whose circuit a opened"
    flaky = next(x for x in d.alternatives if x.model == "flaky")
    assert flaky.rejection == "circuit_open" and "circuit open until" in flaky.reason


async def test_learning_on_one_sidecar_moves_another_s_estimate(start: Start) -> None:
    (_, a), (car_b, b) = await start("a"), await start("b")
    before = next(x.estimated_quality for x in (await b.Route(task(0, dry_run=True))).alternatives
                  if x.model == "flaky")
    for i in range(20):
        d = await a.Route(task(i))
        await a.ReportOutcome(pb.Outcome(decision_id=d.decision_id, attempts=[attempt(d)],
                                         success=True, quality=0.2))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while True:
        d = await b.Route(task(99, dry_run=True))
        after = next(x.estimated_quality for x in d.alternatives if x.model == "flaky")
        if after < before - 0.1:
            break
        assert loop.time() - t0 < 5.0, (before, after)
        await asyncio.sleep(0.05)
    assert car_b.fleet_sync is not None and car_b.fleet_sync.rounds > 0


async def test_redis_down_rejects_budgeted_tasks_keeps_outcomes_and_replays_them(
    start: Start, redis: RedisServer,
) -> None:
    car, stub = await start("a")
    decided = [await stub.Route(task(i)) for i in range(5)]
    assert all(d.status == pb.DECISION_STATUS_ROUTED for d in decided)
    redis.stop(kill=True)
    refused = await stub.Route(task(50))
    assert (refused.status, refused.reason_code) == (
        pb.DECISION_STATUS_REJECTED, pb.REASON_CODE_BUDGET_UNAVAILABLE)
    for d in decided:  # acknowledged while Redis is away: kept on disk
        ack = await stub.ReportOutcome(pb.Outcome(decision_id=d.decision_id,
                                                  attempts=[attempt(d)], success=True))
        assert not ack.duplicate
    assert car.outbox is not None and await car.outbox.size() == 5
    redis.start()  # the same port, its append-only file replayed
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while await car.outbox.size():
        assert loop.time() - t0 < 10, "queued outcomes were not replayed"
        await asyncio.sleep(0.05)
    status = await global_budget(stub)
    assert (status.spent_micros, status.reserved_micros) == (5_000, 0)
    assert (await stub.Route(task(60))).status == pb.DECISION_STATUS_ROUTED


async def test_redis_down_in_local_mode_spends_only_the_local_share(
    start: Start, redis: RedisServer,
) -> None:
    car, stub = await start("a", on_redis_down="local", local_share=0.1)  # $0.005: 5 tasks
    redis.stop(kill=True)
    decisions = [await stub.Route(task(i)) for i in range(10)]
    routed = [d for d in decisions if d.status == pb.DECISION_STATUS_ROUTED]
    assert len(routed) == 5
    for d in routed:
        await stub.ReportOutcome(pb.Outcome(decision_id=d.decision_id, attempts=[attempt(d)],
                                            success=True))
    redis.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert car.outbox is not None
    while await car.outbox.size():
        assert loop.time() - t0 < 10
        await asyncio.sleep(0.05)
    status = await global_budget(stub)
    assert status.spent_micros == 5_000  # what was spent alone is in the shared books now
