"""What Complete leaves behind: spans, metrics, logs, the store, health, grades, reloads.

Real sidecar, real OTLP receiver, real /metrics scrape, real SQLite file, real providers on
loopback (the bundled fake and the independent stub).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from routing_sidecar.app import Sidecar
from routing_sidecar.config import parse_config
from routing_sidecar.logs import ContextFilter, JsonFormatter
from routing_sidecar.providers.fake_server import FakeProviderServer
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.integration.complete_env import (
    KEY,
    KEY_ENV,
    Seen,
    base_url,
    complete,
    complete_config,
    config_raw,
    request,
    running,
    take,
    until,
)
from tests.integration.otlp_receiver import attrs, otlp_receiver
from tests.provider_stub import ProviderStub, StubReply

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
MASKED = f"{KEY[:6]}***{KEY[-4:]}"  # how OpenAI's 401 echoes a key


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
async def fake() -> AsyncIterator[FakeProviderServer]:
    async with FakeProviderServer() as server:
        yield server


@pytest.fixture
def stub() -> Iterator[ProviderStub]:
    server = ProviderStub().start()
    yield server
    server.stop()


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def store_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))


async def test_the_key_reaches_the_providers_and_nothing_else_records_it(
        tmp_path: Path, fake: FakeProviderServer, stub: ProviderStub,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.handler.addFilter(ContextFilter())
    echo = {"error": {"message": f"Incorrect API key provided: {KEY}. Or {MASKED}.",
                      "type": "invalid_request_error", "code": "invalid_api_key"}}
    stub.push(StubReply(401, echo), StubReply(401, echo))
    async with otlp_receiver() as (endpoint, got):
        raw = config_raw(tmp_path, fake.base_url)
        raw["providers"]["alpha"]["base_url"] = base_url("openai", stub.base_url)
        raw["telemetry"] = {"exporter": "otlp_grpc", "endpoint": endpoint,
                            "admin_listen": "127.0.0.1:0"}
        cfg = parse_config(yaml.safe_dump(raw), "test")
        metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT}-01"),)
        async with running(cfg) as (car, grpc_stub):
            fell_back = await complete(grpc_stub, request(), metadata=metadata)
            failed = await complete(grpc_stub, request(
                task_id="t-2", exclude_models=["m-beta", "m-gamma"]))
            assert car.admin_address is not None
            metrics = await asyncio.to_thread(scrape, car.admin_address)
    # It reached both wire formats, as each expects it.
    assert [r.headers["authorization"] for r in stub.received] == [f"Bearer {KEY}"] * 2
    assert [r.headers["x-api-key"] for r in fake.requests()] == [KEY]
    # The 401 was a permanent failure: the fallback answered, or the RPC ended refused.
    assert [a.status for a in fell_back.attempts] == [pb.ATTEMPT_STATUS_PERMANENT_ERROR,
                                                      pb.ATTEMPT_STATUS_SUCCESS]
    assert failed.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failed.done is not None and "HTTP 401" in failed.done.error
    shown = [failed.details, failed.done.error, str(fell_back.done), str(failed.done)]
    formatter = JsonFormatter()
    shown += [formatter.format(r) for r in caplog.records]
    wire = got.wire_bytes()
    stored = store_bytes(Path(cfg.store.path))
    for needle in (KEY, MASKED):
        assert all(needle not in text for text in shown)
        assert needle.encode() not in wire and needle.encode() not in stored
        assert needle not in metrics
    assert "routing_spend_usd_total" in metrics and 'model="m-beta"' in metrics

    # The Complete span continues the caller's trace; every attempt is a child span of it.
    spans = got.spans()
    (rpc,) = [s for s in spans if s.name == "routing_sidecar.v1.Router/Complete"
              and s.trace_id.hex() == TRACE_ID]
    assert rpc.parent_span_id.hex() == PARENT and rpc.kind == Span.SPAN_KIND_SERVER
    assert fell_back.decision is not None
    ra = attrs(rpc.attributes)
    assert ra["routing.decision.id"] == fell_back.decision.decision_id
    assert ra["gen_ai.request.model"] == "m-alpha" and ra["routing.attempts"] == 2
    children = sorted((s for s in spans if s.parent_span_id == rpc.span_id),
                      key=lambda s: attrs(s.attributes)["routing.attempt.index"])
    assert [s.name for s in children] == ["chat m-alpha", "chat m-beta"]
    refused, answered = (attrs(s.attributes) for s in children)
    assert all(s.kind == Span.SPAN_KIND_CLIENT for s in children)
    assert (refused["gen_ai.provider.name"], refused["error.type"]) == ("alpha", "http_401")
    assert children[0].status.code == Status.STATUS_CODE_ERROR
    assert (answered["gen_ai.provider.name"], answered["routing.attempt.status"]) == (
        "beta", "SUCCESS")
    assert answered["gen_ai.usage.output_tokens"] == fell_back.attempts[1].output_tokens > 0
    assert answered["routing.attempt.cost_micros"] == fell_back.attempts[1].cost_micros
    assert children[1].start_time_unix_nano >= children[0].end_time_unix_nano - 10**6


async def test_executed_attempts_feed_health_and_open_breakers(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    raw = config_raw(tmp_path, fake.base_url, {"m-alpha": "fake-500"})
    raw["health"] = {"breaker": {"consecutive_failures": 3, "cooldown_s": 60,
                                 "max_cooldown_s": 60}}
    raw["policies"]["main"]["retry"] = {"max_retries": 2, "base_backoff_s": 0.0,
                                        "max_backoff_s": 0.0}
    async with running(parse_config(yaml.safe_dump(raw), "test")) as (_, stub):
        first = await complete(stub, request())
        second = await complete(stub, request(task_id="t-2"))
        stats = await stub.GetRoutingStats(pb.StatsQuery())
    assert [a.model for a in first.attempts] == ["m-alpha"] * 3 + ["m-beta"]
    assert second.decision is not None and second.decision.model == "m-beta"
    fate = {a.model: a for a in second.decision.alternatives}
    assert fate["m-alpha"].rejection == "circuit_open"
    health = {(h.scope, h.name): h for h in stats.health}
    assert health[("model", "m-alpha")].breaker == "open"
    assert health[("model", "m-beta")].success_rate == 1.0


async def test_a_grade_teaches_learned_quality_once(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    def learned(stats: pb.RoutingStats) -> dict[str, pb.LearnedQuality]:
        return {q.model: q for q in stats.learned if q.task_type == "answer"}

    cfg = complete_config(tmp_path, fake.base_url, {"m-alpha": "fake-401"})
    async with running(cfg) as (_, stub):
        seen = await complete(stub, request())
        assert seen.done is not None and seen.done.success and seen.done.model == "m-beta"
        before = learned(await stub.GetRoutingStats(pb.StatsQuery()))
        decision_id = seen.done.decision_id
        ack = await stub.ReportOutcome(pb.Outcome(decision_id=decision_id, quality=0.1))
        after = learned(await stub.GetRoutingStats(pb.StatsQuery()))
        again = await stub.ReportOutcome(pb.Outcome(decision_id=decision_id, quality=0.9))
        unchanged = learned(await stub.GetRoutingStats(pb.StatsQuery()))
        failed = await complete(stub, request(task_id="t-2", exclude_models=["m-beta",
                                                                             "m-gamma"]))
        assert failed.done is not None
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ReportOutcome(pb.Outcome(decision_id=failed.done.decision_id,
                                                quality=0.5))
    # An answer that merely arrived taught nothing; its grade does, about the model that
    # produced it, once.
    assert "m-beta" not in before or before["m-beta"].samples == 0
    assert not ack.duplicate and ack.actual_cost_micros == seen.done.cost_micros
    assert after["m-beta"].samples > 0 and after["m-beta"].mean < 0.85
    assert again.duplicate and again.actual_cost_micros == seen.done.cost_micros
    assert unchanged["m-beta"] == after["m-beta"]
    assert "m-alpha" not in after or after["m-alpha"].samples == 0  # its 401 is not quality
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (refused.value.details() or "").startswith("quality:")
    with sqlite3.connect(cfg.store.path) as db:
        assert db.execute("SELECT decision_id, model, quality FROM decision_grades").fetchall() \
            == [(decision_id, "m-beta", 0.1)]
        assert db.execute("SELECT quality FROM decision_outcomes WHERE decision_id = ?",
                          (decision_id,)).fetchall() == [(0.1,)]


async def test_a_decision_mode_outcome_can_be_graded_later(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    cfg = complete_config(tmp_path, fake.base_url)
    async with running(cfg) as (_, stub):
        d = await stub.Route(request().route)
        await stub.ReportOutcome(pb.Outcome(decision_id=d.decision_id, success=True, attempts=[
            pb.Attempt(model=d.model, status=pb.ATTEMPT_STATUS_SUCCESS, input_tokens=10,
                       output_tokens=10)]))
        graded = await stub.ReportOutcome(pb.Outcome(decision_id=d.decision_id, quality=0.7))
        d2 = await stub.Route(request(task_id="t-2").route)
        await stub.ReportOutcome(pb.Outcome(decision_id=d2.decision_id, success=True,
                                            quality=0.8, attempts=[pb.Attempt(
                                                model=d2.model, status=pb.ATTEMPT_STATUS_SUCCESS)]))
        regraded = await stub.ReportOutcome(pb.Outcome(decision_id=d2.decision_id, quality=0.1))
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.ReportOutcome(pb.Outcome(decision_id="nope", quality=0.1))
    assert not graded.duplicate
    assert regraded.duplicate  # that outcome carried its grade already
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_reload_rebuilds_the_clients_without_cutting_a_walk(
        tmp_path: Path, fake: FakeProviderServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    raw = config_raw(tmp_path, fake.base_url, {"m-alpha": "fake-tps-25-tokens-20"})
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(raw))
    async with running(parse_config(path.read_text(), str(path)), str(path)) as (car, stub):
        refused = await complete(stub, request())
        monkeypatch.setenv(KEY_ENV, KEY)  # the key appears (rotated in, mounted, ...)
        assert await car.reload()
        assert car.complete is not None
        old = car.complete.execution
        call = stub.Complete(request(task_id="t-2"), timeout=30)
        seen = Seen()
        reloaded = False
        async for event in call:
            take(seen, event)
            if seen.words >= 2 and not reloaded:
                reloaded = True
                assert await car.reload()  # mid-walk: the walk keeps its clients
        assert car.complete.execution is not old and old.retired
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert seen.done is not None and seen.done.success and seen.words == 20


async def test_stopping_the_sidecar_settles_a_walk_in_flight(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    raw = config_raw(tmp_path, fake.base_url, {"m-alpha": "fake-tps-10-tokens-200"})
    raw["server"]["grace_period_s"] = 0.3
    car = Sidecar(parse_config(yaml.safe_dump(raw), "test"))
    await car.start()
    async with grpc.aio.insecure_channel(car.address) as ch:
        call = pb_grpc.RouterStub(ch).Complete(request(), timeout=30)
        seen = Seen()
        async for event in call:
            take(seen, event)
            if seen.words >= 2:
                break
        t0 = time.monotonic()
        await car.stop()  # grace runs out: the walk is cancelled, then settled, then closed
        stopped_in = time.monotonic() - t0
    record = await fake.wait_for(lambda r: r.disconnected)
    assert record.tokens_sent < 200 and stopped_in < 10
    with sqlite3.connect(raw["store"]["path"]) as db:
        rows = db.execute("SELECT status, output_tokens FROM model_selections").fetchall()
        outcomes = db.execute("SELECT COUNT(*) FROM decision_outcomes").fetchall()
    assert outcomes == [(1,)]
    ((status, output),) = rows
    assert status == "CANCELLED" and output >= 2


async def test_many_walks_settle_and_release_every_hold(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    cfg = complete_config(tmp_path, fake.base_url, {"m-alpha": "fake-slow-200"},
                          policy={"hedge_after_ms": 20})
    async with running(cfg) as (_, stub):
        seen = await asyncio.gather(*(complete(stub, request(task_id=f"t-{i}"))
                                      for i in range(12)))
        statuses = await stub.GetBudgetStatus(pb.BudgetQuery(scopes=["global"]))
    (status,) = statuses.budgets
    assert all(s.done is not None and s.done.success for s in seen)
    assert status.reserved_micros == 0
    assert status.spent_micros == sum(s.done.cost_micros for s in seen if s.done)
    await until(lambda: all(r.finished or r.disconnected for r in fake.requests()))
