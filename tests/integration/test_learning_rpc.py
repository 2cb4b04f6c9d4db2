"""Health, circuit breakers and learned quality, end to end through ReportOutcome."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
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
from tests.integration.test_budgets_rpc import FakeClock


def model(provider: str, price: float, quality: float) -> dict[str, Any]:
    return {"provider": provider, "tier": 1, "input_per_mtok": price,
            "output_per_mtok": price, "context_window": 100000, "tokens_per_s": 100,
            "quality": quality}


def learning_config(tmp_path: Path) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:0", "grace_period_s": 1},
        "store": {"path": str(tmp_path / "routing.db")},
        "telemetry": {"admin_listen": ""},
        "models": {
            "flaky": model("flakyco", 0.5, 0.8),
            "steady": model("steadyco", 20.0, 0.8),
            "cheap": model("acme", 0.2, 0.7),
            "strong": model("bigco", 5.0, 0.95),
        },
        "policies": {
            "pair": {"objective": "cost_speed", "models": ["flaky", "steady"], "fallbacks": 1},
            "work": {"objective": "cost_speed", "models": ["cheap", "strong"], "fallbacks": 1},
        },
        "default_policy": "work",
        "critical_lanes": ["payments"],
        "health": {"breaker": {"consecutive_failures": 3, "cooldown_s": 30},
                   "detection": {"min_volume": 2}},
        "learning": {"prior_strength": 5, "exploration": {"max_share": 0.2}},
    }


Make = Callable[..., Awaitable[tuple[Sidecar, pb_grpc.RouterStub]]]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    opened: list[tuple[Sidecar, grpc.aio.Channel]] = []

    async def start(clock: FakeClock, seed: int = 7) -> tuple[Sidecar, pb_grpc.RouterStub]:
        cfg = parse_config(yaml.safe_dump(learning_config(tmp_path)), "test")
        car = Sidecar(cfg, clock=clock, rng=random.Random(seed))
        await car.start()
        ch = grpc.aio.insecure_channel(car.address)
        opened.append((car, ch))
        return car, pb_grpc.RouterStub(ch)

    yield start
    for car, ch in opened:
        await ch.close()
        await car.stop()


def task(task_type: str, i: int, **kw: Any) -> pb.RouteRequest:
    return pb.RouteRequest(task_id=f"{task_type}-{i}", task_type=task_type,
                           estimated_input_tokens=1000, max_output_tokens=500, **kw)


async def report(stub: pb_grpc.RouterStub, d: pb.Decision, ok: bool,
                 quality: float | None = None, call_failed: bool | None = None) -> None:
    # A poor answer is a successful call with a low grade; only real errors fail the attempt.
    failed = (not ok) if call_failed is None else call_failed
    status = pb.ATTEMPT_STATUS_TRANSIENT_ERROR if failed else pb.ATTEMPT_STATUS_SUCCESS
    attempt = pb.Attempt(model=d.model, status=status, input_tokens=1000, output_tokens=500,
                         duration=Duration(seconds=2))
    await stub.ReportOutcome(pb.Outcome(decision_id=d.decision_id, attempts=[attempt],
                                        success=ok, quality=quality))


def fate(d: pb.Decision, name: str) -> pb.Alternative:
    return next(a for a in d.alternatives if a.model == name)


async def test_failing_model_is_cut_off_cooled_down_probed_once_and_recovers(
    make: Make,
) -> None:
    clock = FakeClock()
    _, stub = await make(clock)
    for i in range(3):
        d = await stub.Route(task("job", i, policy="pair"))
        assert d.model == "flaky", "the cheaper model is preferred while healthy"
        await report(stub, d, ok=False)
    cut = await stub.Route(task("job", 3, policy="pair"))
    assert cut.model == "steady"
    assert fate(cut, "flaky").rejection == "circuit_open"
    assert "circuit open until 12:00:30Z" in fate(cut, "flaky").reason
    clock.t += 29
    assert (await stub.Route(task("job", 4, policy="pair"))).model == "steady"
    clock.t += 2  # past the cooldown: one probe goes through, a second is held back
    probe = await stub.Route(task("job", 5, policy="pair"))
    held = await stub.Route(task("job", 6, policy="pair"))
    assert probe.model == "flaky"
    assert held.model == "steady" and fate(held, "flaky").rejection == "circuit_open"
    await report(stub, probe, ok=True)
    assert (await stub.Route(task("job", 7, policy="pair"))).model == "flaky"
    stats = await stub.GetRoutingStats(pb.StatsQuery(hours=1))
    health = {(h.scope, h.name): h for h in stats.health}
    assert health[("model", "flaky")].breaker == "closed"
    states = {p.provider: p.detection_state for p in stats.providers}
    assert set(states) >= {"flakyco", "steadyco", "acme", "bigco"}
    assert states["acme"] == "idle"


async def test_provider_gauges_read_detection_and_breaker_state(make: Make) -> None:
    car, stub = await make(FakeClock())
    for i in range(6):
        d = await stub.Route(task("job", i, policy="pair"))
        await report(stub, d, ok=False)  # flaky, then steady once flaky's breaker opens
    gauges = {h.provider: h for h in car._provider_health()}
    assert gauges["flakyco"].detection == "degraded"
    assert (gauges["acme"].detection, gauges["acme"].breaker) == ("idle", "closed")
    assert set(gauges) == {"acme", "bigco", "flakyco", "steadyco"}


async def drive(stub: pb_grpc.RouterStub, task_type: str, rounds: int,
                truth: dict[str, float], **kw: Any) -> list[str]:
    chosen = []
    for i in range(rounds):
        d = await stub.Route(task(task_type, i, requires=pb.Requirements(min_quality=0.8), **kw))
        assert d.status == pb.DECISION_STATUS_ROUTED, d.reason
        chosen.append(d.model)
        q = truth[d.model]
        await report(stub, d, ok=q >= 0.5, quality=q, call_failed=False)
    return chosen


async def test_cheap_model_wins_where_it_is_good_and_loses_where_it_is_not(
    make: Make,
) -> None:
    _, stub = await make(FakeClock())
    easy = await drive(stub, "summarise", 300, {"cheap": 0.95, "strong": 0.95})
    hard = await drive(stub, "prove_theorem", 300, {"cheap": 0.3, "strong": 0.95})
    assert easy[:5] == ["strong"] * 5, "unproven at first: the model that meets the floor"
    assert Counter(easy[-50:])["cheap"] >= 45, Counter(easy[-50:])
    # Thompson sampling keeps a sliver of exploration alive, by design, but bounded.
    assert Counter(hard[-100:])["strong"] >= 97, Counter(hard[-100:])
    assert Counter(hard)["cheap"] <= 0.2 * len(hard), "exploration stays within its share"
    d = await stub.Route(task("summarise", 999, requires=pb.Requirements(min_quality=0.8)))
    assert "proven" in fate(d, "cheap").reason
    assert fate(d, "cheap").estimated_quality > 0.8


async def test_critical_lane_never_gets_an_unproven_model(make: Make) -> None:
    _, stub = await make(FakeClock())
    chosen = await drive(stub, "refund", 200, {"cheap": 0.95, "strong": 0.95},
                         labels={"lane": "payments"})
    assert set(chosen) == {"strong"}
    d = await stub.Route(task("refund", 500, labels={"lane": "payments"},
                              requires=pb.Requirements(min_quality=0.8)))
    assert fate(d, "cheap").rejection == "quality"
    assert "critical" in fate(d, "cheap").reason


async def test_restart_keeps_what_was_learned(make: Make) -> None:
    clock = FakeClock()
    car, stub = await make(clock)
    await drive(stub, "summarise", 300, {"cheap": 0.95, "strong": 0.95})
    for i in range(3):
        await report(stub, await stub.Route(task("job", i, policy="pair")), ok=False)
    before = {(q.task_type, q.model): q for q in
              (await stub.GetRoutingStats(pb.StatsQuery(hours=1))).learned}
    await car.stop()
    _, again = await make(clock, seed=99)
    after = {(q.task_type, q.model): q for q in
             (await again.GetRoutingStats(pb.StatsQuery(hours=1))).learned}
    assert after.keys() == before.keys()
    for key, q in before.items():
        assert after[key].mean == pytest.approx(q.mean)
        assert after[key].samples == pytest.approx(q.samples)
    d = await again.Route(task("summarise", 1000, requires=pb.Requirements(min_quality=0.8)))
    assert d.model == "cheap"
    assert fate(await again.Route(task("job", 9, policy="pair")), "flaky").rejection == (
        "circuit_open")


async def test_floors_route_on_the_estimate_then_below_it_and_refuse_only_when_critical(
    make: Make,
) -> None:
    _, stub = await make(FakeClock())
    high = pb.Requirements(min_quality=0.9)  # strong's prior (0.95) is not proof of 0.9
    d = await stub.Route(task("essay", 1, requires=high))
    assert (d.status, d.model) == (pb.DECISION_STATUS_ROUTED, "strong")
    assert "No model proven above the quality floor is available" in d.reason
    assert fate(d, "cheap").rejection == "quality"
    critical = await stub.Route(task("essay", 2, requires=high, labels={"lane": "payments"}))
    assert critical.status == pb.DECISION_STATUS_REJECTED
    assert critical.reason_code == pb.REASON_CODE_NO_CAPABLE_MODEL
    # A floor no estimate meets routes the best estimate, and says so in numbers.
    beyond = await stub.Route(task("essay", 3, requires=pb.Requirements(min_quality=0.99)))
    assert (beyond.status, beyond.reason_code, beyond.model) == (
        pb.DECISION_STATUS_ROUTED, pb.REASON_CODE_BELOW_FLOOR, "strong")
    assert "no capable model's estimate meets floor 0.99" in beyond.reason
    assert "(0.95)" in beyond.reason
    refused = await stub.Route(task("essay", 4, requires=pb.Requirements(min_quality=0.99),
                                    labels={"lane": "payments"}))
    assert (refused.status, refused.reason_code) == (
        pb.DECISION_STATUS_REJECTED, pb.REASON_CODE_NO_CAPABLE_MODEL)
    assert "critical lane" in refused.reason
    # Outcomes at 0.97 prove strong, after which it is chosen on proof, not on estimate.
    for i in range(40):
        await report(stub, await stub.Route(task("essay", 10 + i, requires=high)), ok=True,
                     quality=0.97, call_failed=False)
    # On the critical lane (no exploration) strong now runs on proof.
    proven = await stub.Route(task("essay", 99, requires=high, labels={"lane": "payments"}))
    assert proven.model == "strong" and "proven" in fate(proven, "strong").reason
    assert "estimated quality alone" not in proven.reason


async def test_rate_limited_retry_after_holds_the_breaker_open(make: Make) -> None:
    clock = FakeClock()
    _, stub = await make(clock)
    d = await stub.Route(task("job", 1, policy="pair"))
    assert d.model == "flaky"
    limited = pb.Attempt(model="flaky", status=pb.ATTEMPT_STATUS_RATE_LIMITED,
                         duration=Duration(seconds=1), retry_after=Duration(seconds=120))
    await stub.ReportOutcome(pb.Outcome(decision_id=d.decision_id, attempts=[limited]))
    held = await stub.Route(task("job", 2, policy="pair"))
    assert held.model == "steady"
    assert "circuit open until 12:02:00Z" in fate(held, "flaky").reason
    clock.t += 61  # past the 30 s cooldown, not past the provider's retry-after
    assert (await stub.Route(task("job", 3, policy="pair"))).model == "steady"
    clock.t += 60
    assert (await stub.Route(task("job", 4, policy="pair"))).model == "flaky"
