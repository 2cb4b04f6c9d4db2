"""Health goes NOT_SERVING, with one log line saying why, while the sidecar cannot decide.

Real sidecars over real channels: a store that refuses writes (SQLite triggers added from
another connection, as another writer would), and every model's circuit open.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from routing_sidecar.app import Sidecar
from routing_sidecar.config import parse_config
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.fakes import FakeClock

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
WAIT_S = 10.0  # the readiness watch looks twice a second; this only bounds a failing test
TABLES = ("model_routing_decisions", "routing_policies")


def _model(provider: str, price: float) -> dict[str, Any]:
    return {"provider": provider, "tier": 1, "input_per_mtok": price, "output_per_mtok": price,
            "context_window": 100000, "tokens_per_s": 100, "quality": 0.8}


def _config(tmp_path: Path) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:0", "grace_period_s": 1},
        "store": {"path": str(tmp_path / "routing.db")},
        "telemetry": {"admin_listen": ""},
        "models": {"one": _model("acme", 0.5), "two": _model("bigco", 1.0)},
        "policies": {"work": {"models": ["one", "two"], "fallbacks": 1}},
        "default_policy": "work",
        "health": {"breaker": {"consecutive_failures": 1, "cooldown_s": 30,
                               "max_cooldown_s": 60}},
    }


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Sidecar, grpc.aio.Channel, FakeClock]]:
    clock = FakeClock()
    car = Sidecar(parse_config(yaml.safe_dump(_config(tmp_path)), "test"), clock=clock,
                  rng=random.Random(3))
    await car.start()
    ch = grpc.aio.insecure_channel(car.address)
    try:
        yield car, ch, clock
    finally:
        await ch.close()
        await car.stop()


async def _health(ch: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


async def _until(ch: grpc.aio.Channel, status: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while await _health(ch) != status:
        assert loop.time() < deadline, f"health never became {status}"
        await asyncio.sleep(0.05)
    assert await _health(ch, "routing_sidecar.v1.Router") == status


def _refuse_writes(db: Path, on: bool) -> None:
    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.execute("PRAGMA busy_timeout = 5000")
        for table in TABLES:
            if on:
                conn.execute(f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
                             "BEGIN SELECT RAISE(ABORT, 'disk refuses writes'); END")
            else:
                conn.execute(f"DROP TRIGGER refuse_{table}")


def _route(i: int) -> pb.RouteRequest:
    return pb.RouteRequest(task_id=f"t-{i}", task_type="job", estimated_input_tokens=100,
                           max_output_tokens=100)


async def test_a_refused_write_turns_health_not_serving_until_writes_work(
    running: tuple[Sidecar, grpc.aio.Channel, FakeClock], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, ch, _ = running
    stub = pb_grpc.RouterStub(ch)
    assert (await stub.Route(_route(0))).status == pb.DECISION_STATUS_ROUTED
    assert await _health(ch) == SERVING
    _refuse_writes(tmp_path / "routing.db", on=True)
    caplog.set_level(logging.INFO, logger="routing_sidecar.readiness")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Route(_route(1))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await _health(ch) == NOT_SERVING  # at once: the failed write said so
    lines = [r for r in caplog.records if r.name == "routing_sidecar.readiness"]
    assert [r.getMessage() for r in lines] == ["not serving: the sidecar cannot decide"]
    assert "the store refused a write" in lines[0].reason  # type: ignore[attr-defined]
    await asyncio.sleep(1.2)  # probe writes keep failing meanwhile
    assert await _health(ch) == NOT_SERVING
    assert len([r for r in caplog.records if r.name == "routing_sidecar.readiness"]) == 1
    _refuse_writes(tmp_path / "routing.db", on=False)
    await _until(ch, SERVING)  # the probe's write worked, with no Route needed
    assert (await stub.Route(_route(2))).status == pb.DECISION_STATUS_ROUTED
    assert [r.getMessage() for r in caplog.records if r.name == "routing_sidecar.readiness"
            ][-1] == "readiness restored"


async def test_every_circuit_open_is_not_serving_until_one_half_opens(
    running: tuple[Sidecar, grpc.aio.Channel, FakeClock], caplog: pytest.LogCaptureFixture,
) -> None:
    _, ch, clock = running
    stub = pb_grpc.RouterStub(ch)
    caplog.set_level(logging.INFO, logger="routing_sidecar.readiness")
    d = await stub.Route(_route(0))
    failed = [pb.Attempt(model=m, status=pb.ATTEMPT_STATUS_TRANSIENT_ERROR, input_tokens=100,
                         duration=Duration(seconds=1)) for m in ("one",)]
    await stub.ReportOutcome(pb.Outcome(decision_id=d.decision_id, attempts=failed,
                                        success=False))
    await asyncio.sleep(1.2)  # one circuit open of two: still deciding
    assert await _health(ch) == SERVING
    d = await stub.Route(_route(1))
    assert d.model == "two"
    await stub.ReportOutcome(pb.Outcome(
        decision_id=d.decision_id, success=False, attempts=[pb.Attempt(
            model="two", status=pb.ATTEMPT_STATUS_TRANSIENT_ERROR, input_tokens=100,
            duration=Duration(seconds=1))]))
    await _until(ch, NOT_SERVING)
    reasons = [getattr(r, "reason", "") for r in caplog.records
               if r.getMessage() == "not serving: the sidecar cannot decide"]
    assert reasons == ["every model's circuit is open (its own or its provider's)"]
    clock.t += 31  # past the cooldown: the circuits half-open and let a probe through
    await _until(ch, SERVING)
