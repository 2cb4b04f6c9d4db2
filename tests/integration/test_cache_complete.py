"""Execute mode's response cache: a real sidecar, a real fake provider on loopback, real SQLite.

Every provider call is counted by the fake provider itself (`FakeProviderServer.requests()`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from routing_sidecar.app import Sidecar
from routing_sidecar.config import parse_config
from routing_sidecar.domain import DecisionStatus, ReasonCode
from routing_sidecar.providers.fake_server import FakeProviderServer
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.fakes import FakeClock
from tests.integration.complete_env import KEY, KEY_ENV, Seen, complete, config_raw
from tests.integration.otlp_receiver import attrs, otlp_receiver

SUCCESS = pb.ATTEMPT_STATUS_SUCCESS


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
async def fake() -> AsyncIterator[FakeProviderServer]:
    async with FakeProviderServer() as server:
        yield server


class Env:
    """A sidecar in execute mode on a fake clock, with a stub and the fake provider."""

    def __init__(self, car: Sidecar, stub: pb_grpc.RouterStub, fake: FakeProviderServer,
                 clock: FakeClock) -> None:
        self.car, self.stub, self.fake, self.clock = car, stub, fake, clock

    def calls(self) -> int:
        return len(self.fake.requests())

    async def complete(self, stream: bool = False, *, project: str = "alpha",
                       temperature: float | None = 0.0, cache: pb.CacheOptions | None = None,
                       prompt: str = "Why is the disk on db-3 full?", task_id: str = "t-1",
                       ) -> Seen:
        req = pb.CompleteRequest(
            route=pb.RouteRequest(task_id=task_id, task_type="triage",
                                  labels={"project": project}),
            messages=[pb.ChatMessage(role="system", content="You triage alerts briefly."),
                      pb.ChatMessage(role="user", content=prompt)],
            stream=stream)
        if temperature is not None:
            req.temperature = temperature
        if cache is not None:
            req.cache.CopyFrom(cache)
        return await complete(self.stub, req)


def env_config(tmp_path: Path, root: str, scripts: dict[str, str] | None = None,
               policy: dict[str, Any] | None = None, **cache: Any) -> Any:
    raw = config_raw(tmp_path, root, scripts, policy=policy)
    raw["cache"] = {"sweep_interval_s": 3600, **cache}
    return parse_config(yaml.safe_dump(raw), "test")


async def start(tmp_path: Path, fake: FakeProviderServer, scripts: dict[str, str] | None = None,
                policy: dict[str, Any] | None = None, **cache: Any) -> tuple[Env, Any]:
    clock = FakeClock()
    car = Sidecar(env_config(tmp_path, fake.base_url, scripts, policy, **cache), clock=clock)
    await car.start()
    channel = grpc.aio.insecure_channel(car.address)
    return Env(car, pb_grpc.RouterStub(channel), fake, clock), channel


@pytest.fixture
async def env(tmp_path: Path, fake: FakeProviderServer) -> AsyncIterator[Env]:
    e, channel = await start(tmp_path, fake)
    try:
        yield e
    finally:
        await channel.close()
        await e.car.stop()


def assert_hit(hit: Seen, first: Seen) -> None:
    assert hit.code == grpc.StatusCode.OK and hit.done is not None and first.done is not None
    assert hit.decision is not None and first.decision is not None
    assert hit.decision.status == pb.DECISION_STATUS_CACHE_HIT
    assert hit.decision.reason_code == pb.REASON_CODE_CACHE_HIT
    assert hit.decision.cache_source_decision_id == first.decision.decision_id
    assert (hit.decision.model, hit.decision.provider) == (first.done.model, first.done.provider)
    assert not hit.decision.cached_value  # execute mode answers with the text instead
    assert hit.done.cache_hit and hit.done.success and not first.done.cache_hit
    assert hit.done.decision_id == hit.decision.decision_id != first.decision.decision_id
    assert (hit.done.cost_micros, list(hit.done.attempts), hit.attempts) == (0, [], [])
    assert hit.done.text == first.text and hit.done.finish_reason == "stop"


async def test_a_repeat_is_a_hit_with_one_provider_call(env: Env) -> None:
    first = await env.complete()
    assert first.done is not None and first.done.success and first.text
    assert env.calls() == 1
    hit = await env.complete(task_id="t-2")
    assert_hit(hit, first)
    assert hit.shape() == ["decision", "done"]
    assert env.calls() == 1
    # Audited as a CACHE_HIT decision, with the source named in the reason.
    assert env.car.store is not None and hit.decision is not None and first.decision
    row = await env.car.store.get_decision(hit.decision.decision_id)
    assert row is not None
    assert (row.status, row.reason_code) == (DecisionStatus.CACHE_HIT, ReasonCode.CACHE_HIT)
    assert first.decision.decision_id in row.reason
    stats = await env.stub.GetCacheStats(pb.CacheQuery())
    assert (stats.total.hits, stats.total.misses, stats.total.stores) == (1, 1, 1)
    assert stats.total.saved_micros == first.done.cost_micros > 0


async def test_another_project_misses(env: Env) -> None:
    await env.complete(project="alpha")
    other = await env.complete(project="beta")
    assert other.decision is not None and other.decision.status == pb.DECISION_STATUS_ROUTED
    assert other.done is not None and not other.done.cache_hit
    assert env.calls() == 2
    assert (await env.complete(project="beta")).done.cache_hit  # type: ignore[union-attr]
    assert env.calls() == 2


async def test_a_streamed_hit_replays_the_deltas_in_their_pieces(tmp_path: Path,
                                                                 fake: FakeProviderServer) -> None:
    # Paced tokens arrive one by one, so the first caller sees the provider's own pieces.
    e, channel = await start(tmp_path, fake, {"m-alpha": "fake-tps-40"})
    try:
        first = await e.complete(stream=True)
        assert len(first.deltas) > 3
        hit = await e.complete(stream=True)
        assert_hit(hit, first)
        assert hit.deltas == first.deltas
        assert hit.shape() == ["decision", "delta*", "done"]
        plain = await e.complete(stream=False)  # the same entry, whole, for a caller not streaming
        assert plain.done is not None and plain.done.cache_hit and not plain.deltas
        assert plain.done.text == "".join(first.deltas)
        assert e.calls() == 1
    finally:
        await channel.close()
        await e.car.stop()


@pytest.mark.parametrize(("scripts", "policy", "succeeds"), [
    ({"m-alpha": "fake-cut-2", "m-beta": "fake-cut-2", "m-gamma": "fake-cut-2"}, None, False),
    ({"m-alpha": "fake-cut-2"}, {"resume_on_stream_failure": True}, True),
    ({"m-alpha": "fake-401", "m-beta": "fake-401", "m-gamma": "fake-401"}, None, False),
    # Cut at max output tokens (finish reason "length"): a successful answer, but not whole.
    ({"m-alpha": "fake-tokens-500"}, {"max_output_tokens": 5}, True),
], ids=["cut-stream", "cut-then-resumed", "error", "length"])
async def test_cut_streams_errors_and_truncated_answers_are_not_stored(
    tmp_path: Path, fake: FakeProviderServer, scripts: dict[str, str],
    policy: dict[str, Any] | None, succeeds: bool,
) -> None:
    e, channel = await start(tmp_path, fake, scripts, policy)
    try:
        first = await e.complete(stream=True)
        assert first.done is not None and not first.done.cache_hit
        assert first.done.success is succeeds
        calls = e.calls()
        again = await e.complete(stream=True)
        assert again.done is not None and not again.done.cache_hit
        assert e.calls() > calls  # the provider was asked again
        assert (await e.stub.GetCacheStats(pb.CacheQuery())).entries == 0
    finally:
        await channel.close()
        await e.car.stop()


async def test_a_cancelled_stream_is_not_stored(tmp_path: Path,
                                                fake: FakeProviderServer) -> None:
    e, channel = await start(tmp_path, fake, {"m-alpha": "fake-tps-20-tokens-40"})
    try:
        req = pb.CompleteRequest(
            route=pb.RouteRequest(task_id="t-c", task_type="triage",
                                  labels={"project": "alpha"}),
            messages=[pb.ChatMessage(role="user", content="Why is the disk on db-3 full?")],
            stream=True, temperature=0.0)
        call = e.stub.Complete(req)
        async for event in call:
            if event.WhichOneof("event") == "delta":
                call.cancel()
                break
        await fake.wait_for(lambda r: r.disconnected, timeout_s=5)
        assert (await e.stub.GetCacheStats(pb.CacheQuery())).entries == 0
    finally:
        await channel.close()
        await e.car.stop()


async def test_twenty_concurrent_identical_misses_make_one_provider_call(
    tmp_path: Path, fake: FakeProviderServer,
) -> None:
    e, channel = await start(tmp_path, fake, {"m-alpha": "fake-slow-300"})
    try:
        seen = await asyncio.gather(*(e.complete(stream=i % 2 == 0, task_id=f"t-{i}")
                                      for i in range(20)))
        assert e.calls() == 1
        assert all(s.code == grpc.StatusCode.OK and s.done and s.done.success for s in seen)
        texts = {s.text for s in seen}
        assert len(texts) == 1 and texts != {""}
        leaders = [s for s in seen if s.done and not s.done.cache_hit]
        assert len(leaders) == 1
        stats = await e.stub.GetCacheStats(pb.CacheQuery())
        assert (stats.total.hits, stats.total.misses) == (19, 1)
    finally:
        await channel.close()
        await e.car.stop()


async def test_a_hit_reserves_nothing_and_charges_nothing(env: Env) -> None:
    first = await env.complete()
    assert first.done is not None and first.done.cost_micros > 0
    before = await env.stub.GetBudgetStatus(pb.BudgetQuery(scopes=["global"]))
    hit = await env.complete()
    assert hit.done is not None and hit.done.cache_hit
    after = await env.stub.GetBudgetStatus(pb.BudgetQuery(scopes=["global"]))
    assert [(b.spent_micros, b.reserved_micros) for b in after.budgets] == [
        (b.spent_micros, b.reserved_micros) for b in before.budgets]
    assert before.budgets[0].spent_micros == first.done.cost_micros


async def test_only_deterministic_requests_unless_they_opt_in(env: Env) -> None:
    await env.complete(temperature=None)  # the provider's default temperature: not stored
    await env.complete(temperature=None)
    await env.complete(temperature=0.7)
    assert env.calls() == 3
    opted = pb.CacheOptions()  # sending options at all opts in
    await env.complete(temperature=0.7, cache=opted, prompt="p2")
    hit = await env.complete(temperature=0.7, cache=opted, prompt="p2")
    assert hit.done is not None and hit.done.cache_hit and env.calls() == 4


async def test_no_cache_no_store_namespace_and_ttl(env: Env) -> None:
    await env.complete(cache=pb.CacheOptions(no_store=True))
    assert (await env.stub.GetCacheStats(pb.CacheQuery())).entries == 0
    await env.complete()
    fresh = await env.complete(cache=pb.CacheOptions(no_cache=True))
    assert fresh.done is not None and not fresh.done.cache_hit and env.calls() == 3
    nightly = pb.CacheOptions(namespace="nightly", ttl_s=60)
    miss = await env.complete(cache=nightly)
    assert miss.done is not None and not miss.done.cache_hit and env.calls() == 4
    assert (await env.complete(cache=nightly)).done.cache_hit  # type: ignore[union-attr]
    env.clock.t += 61  # past the request's own ttl, within the configured one
    assert not (await env.complete(cache=nightly)).done.cache_hit  # type: ignore[union-attr]
    assert (await env.complete()).done.cache_hit  # type: ignore[union-attr]
    ns = await env.stub.GetCacheStats(pb.CacheQuery(namespace="nightly"))
    assert ns.entries == 1


@pytest.mark.parametrize(("cache", "field"), [
    (pb.CacheOptions(ttl_s=-1), "cache.ttl_s"),
    (pb.CacheOptions(namespace="bad name"), "cache.namespace"),
])
async def test_bad_cache_options_name_the_field(env: Env, cache: pb.CacheOptions,
                                                field: str) -> None:
    seen = await env.complete(cache=cache)
    assert seen.code == grpc.StatusCode.INVALID_ARGUMENT
    assert seen.details.startswith(f"{field}:") and not seen.kinds
    assert env.calls() == 0


async def test_the_complete_span_says_hit_or_miss(tmp_path: Path,
                                                  fake: FakeProviderServer) -> None:
    async with otlp_receiver() as (endpoint, got):
        raw = config_raw(tmp_path, fake.base_url)
        raw["cache"] = {"sweep_interval_s": 3600}
        raw["telemetry"] = {"exporter": "otlp_grpc", "endpoint": endpoint, "admin_listen": ""}
        car = Sidecar(parse_config(yaml.safe_dump(raw), "test"))
        await car.start()
        try:
            async with grpc.aio.insecure_channel(car.address) as ch:
                e = Env(car, pb_grpc.RouterStub(ch), fake, FakeClock())
                first = await e.complete(prompt="the secret prompt words")
                hit = await e.complete(prompt="the secret prompt words")
        finally:
            await car.stop()
    assert first.decision is not None and hit.decision is not None
    spans = {attrs(s.attributes).get("routing.decision.id"): attrs(s.attributes)
             for s in got.spans() if s.name == "routing_sidecar.v1.Router/Complete"}
    assert spans[first.decision.decision_id]["routing.cache.result"] == "miss"
    assert spans[hit.decision.decision_id]["routing.cache.result"] == "hit"
    assert spans[hit.decision.decision_id]["routing.cache.source_decision_id"] == (
        first.decision.decision_id)
    assert "secret prompt" not in repr(got.spans())
