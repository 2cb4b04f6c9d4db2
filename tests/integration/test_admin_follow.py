"""Sidecars sharing one PostgreSQL store take up each other's pauses and policy edits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import yaml

from routing_sidecar import app
from routing_sidecar.app import Sidecar
from routing_sidecar.config import parse_config
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.conftest import config_dict

Pair = tuple[Sidecar, Sidecar, pb_grpc.RouterStub]

@pytest.fixture
async def pair(tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
               ) -> AsyncIterator[Pair]:
    monkeypatch.setattr(app, "ADMIN_FOLLOW_S", 0.05)  # looks often, so the test is short
    cars = []
    for name in ("a", "b"):
        raw = config_dict(tmp_path)
        raw["store"] = {"url": pg_dsn, "pool_size": 2}
        raw["cache"] = {"path": str(tmp_path / f"{name}-cache.db")}
        raw["telemetry"] = {"exporter": "none", "admin_listen": ""}
        car = Sidecar(parse_config(yaml.safe_dump(raw), name))
        await car.start()
        cars.append(car)
    async with grpc.aio.insecure_channel(cars[1].address) as ch:
        yield cars[0], cars[1], pb_grpc.RouterStub(ch)
    for car in cars:
        await car.stop()

def fix_bug(i: int) -> pb.RouteRequest:
    return pb.RouteRequest(task_id=f"t-{i}", task_type="fix_bug", estimated_input_tokens=2000,
                           max_output_tokens=1000, dry_run=True)

async def eventually(stub: pb_grpc.RouterStub, ok: Callable[[pb.Decision], bool]) -> pb.Decision:
    """Route on the other sidecar until its decision passes `ok` (a few seconds at most)."""
    for i in range(200):
        d = await stub.Route(fix_bug(i))
        if ok(d):
            return d
        await asyncio.sleep(0.05)
    raise AssertionError(f"the other sidecar never took the edit up: {d}")

async def test_a_pause_through_one_sidecar_reaches_the_other(pair: Pair) -> None:
    a, _, b = pair
    chosen = (await b.Route(fix_bug(0))).model
    await a.operator.pause(chosen, "provider incident")
    d = await eventually(b, lambda d: d.model != chosen)
    [alt] = [x for x in d.alternatives if x.model == chosen]
    assert "paused" in alt.reason
    await a.operator.resume(chosen)
    await eventually(b, lambda d: d.model == chosen)

async def test_a_policy_edit_through_one_sidecar_reaches_the_other(pair: Pair) -> None:
    a, other, b = pair
    assert (await b.Route(fix_bug(0))).model != "glm-4.6"
    change, _ = await a.policies.set("code", {"models": ["glm-4.6"], "fallbacks": 0})
    await eventually(b, lambda d: d.model == "glm-4.6")
    assert other.policies.latest["code"].version == change.version
    await a.policies.revert("code")
    await eventually(b, lambda d: d.model != "glm-4.6")
