"""fleet.unhealthy_without_redis: health NOT_SERVING while the fleet's Redis is away."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from tests.integration.test_fleet import Start, redis, start, task  # noqa: F401 - fixtures
from tests.integration.test_readiness import NOT_SERVING, SERVING, WAIT_S, _health, _until
from tests.redis_server import RedisServer


@pytest.mark.parametrize("unhealthy", [True, False])
async def test_redis_away_is_not_serving_only_when_asked(
    start: Start, redis: RedisServer, unhealthy: bool,  # noqa: F811 - the fixtures above
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="routing_sidecar.readiness")
    car, stub = await start("a", unhealthy_without_redis=unhealthy)
    async with grpc.aio.insecure_channel(car.address) as ch:
        assert await _health(ch) == SERVING
        redis.stop(kill=True)
        refused = await stub.Route(task(1))
        assert refused.reason_code == pb.REASON_CODE_BUDGET_UNAVAILABLE
        if unhealthy:
            await _until(ch, NOT_SERVING)
            (line,) = [r for r in caplog.records
                       if r.getMessage() == "not serving: the sidecar cannot decide"]
            assert line.reason.startswith("Redis is out of reach")  # type: ignore[attr-defined]
        else:
            assert await _health(ch) == SERVING
        redis.start()
        await _until(ch, SERVING)  # with unhealthy: once the ledger has reached Redis again
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while (await stub.Route(task(2))).status != pb.DECISION_STATUS_ROUTED:
            assert not unhealthy, "SERVING again, yet budgeted tasks are still refused"
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
    if not unhealthy:
        assert not [r for r in caplog.records if r.name == "routing_sidecar.readiness"]
