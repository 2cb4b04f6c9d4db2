"""Small things a caller reads: a duplicate's ack, a downgrade budget's rejection, per-task limits.

Real sidecar, real SQLite, real channel: one model at $1 per million tokens, so every decision
below is estimated at 2,000 micro-USD.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
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
from tests.fakes import FakeClock

COST = 2_000  # 1,000 input + 1,000 output tokens at $1 per million


def _config(tmp_path: Path, budgets: list[dict[str, Any]]) -> dict[str, Any]:
    model = {"provider": "acme", "tier": 1, "input_per_mtok": 1.0, "output_per_mtok": 1.0,
             "context_window": 100000, "tokens_per_s": 100, "quality": 0.8}
    return {
        "server": {"listen": "127.0.0.1:0", "grace_period_s": 1},
        "store": {"path": str(tmp_path / "routing.db")},
        "telemetry": {"admin_listen": ""},
        "models": {"only": model},
        "policies": {"work": {"models": ["only"], "fallbacks": 0}},
        "default_policy": "work",
        "budgets": budgets,
    }


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Any]:
    opened: list[tuple[Sidecar, grpc.aio.Channel]] = []

    async def run(budgets: list[dict[str, Any]]) -> pb_grpc.RouterStub:
        car = Sidecar(parse_config(yaml.safe_dump(_config(tmp_path, budgets)), "test"),
                      clock=FakeClock(), rng=random.Random(1))
        await car.start()
        ch = grpc.aio.insecure_channel(car.address)
        opened.append((car, ch))
        return pb_grpc.RouterStub(ch)

    yield run
    for car, ch in opened:
        await ch.close()
        await car.stop()


def _task(task_id: str) -> pb.RouteRequest:
    return pb.RouteRequest(task_id=task_id, task_type="job", estimated_input_tokens=1000,
                           max_output_tokens=1000)


async def test_a_duplicate_outcome_is_acked_with_the_recorded_cost(start: Any) -> None:
    stub = await start([])
    d = await stub.Route(_task("t-dup"))

    def outcome(cost: int) -> pb.Outcome:
        return pb.Outcome(decision_id=d.decision_id, success=True, attempts=[pb.Attempt(
            model="only", status=pb.ATTEMPT_STATUS_SUCCESS, input_tokens=1000,
            output_tokens=500, cost_micros=cost, duration=Duration(seconds=1))])

    first = await stub.ReportOutcome(outcome(1_500))
    again = await stub.ReportOutcome(outcome(999))
    assert (first.duplicate, first.actual_cost_micros) == (False, 1_500)
    assert (again.duplicate, again.actual_cost_micros) == (True, 1_500)


@pytest.mark.parametrize(("on_exceed", "says_reject"), [("downgrade", False), ("reject", True)])
async def test_a_rejection_names_what_the_budget_does(
    start: Any, on_exceed: str, says_reject: bool,
) -> None:
    stub = await start([{"scope": "global", "period": "day", "limit_usd": COST / 2 / 1e6,
                         "on_exceed": on_exceed}])
    d = await stub.Route(_task("t-over"))
    assert d.status == pb.DECISION_STATUS_REJECTED
    assert ("on_exceed reject" in d.reason) is says_reject, d.reason
    if not says_reject:
        assert "no cheaper model fits to downgrade to" in d.reason


async def test_the_per_task_limit_counts_every_decision_of_one_task(start: Any) -> None:
    stub = await start([{"scope": "task", "limit_usd": 2.5 * COST / 1e6,
                         "on_exceed": "reject"}])
    first = await stub.Route(_task("t-same"))
    second = await stub.Route(_task("t-same"))
    third = await stub.Route(_task("t-same"))  # 3 x 2,000 is over the task's 5,000
    other = await stub.Route(_task("t-other"))  # another task has a limit of its own
    assert [first.status, second.status] == [pb.DECISION_STATUS_ROUTED] * 2
    assert third.status == pb.DECISION_STATUS_REJECTED
    assert "on_exceed reject" in third.reason
    assert other.status == pb.DECISION_STATUS_ROUTED
