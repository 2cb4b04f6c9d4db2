"""Decision mode's response cache through a real sidecar: store on an outcome, hit on a Route."""

from __future__ import annotations

import asyncio
import gc
import logging
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from routing_sidecar.app import Sidecar
from routing_sidecar.config import parse_config
from routing_sidecar.domain import DecisionStatus, ReasonCode
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.conftest import config_dict
from tests.fakes import FakeClock
from tests.integration.otlp_receiver import attrs, otlp_receiver
from tests.redis_server import RedisServer


def cache_config(tmp_path: Path, **cache: Any) -> dict[str, Any]:
    raw = config_dict(tmp_path)
    # Sweeps run when a test asks (Sidecar.cache.sweep_once), or after many stores.
    raw["cache"] = {"sweep_interval_s": 3600, **cache}
    raw["budgets"] = [{"scope": "project:alpha", "period": "day", "limit_usd": 5.0}]
    return raw


class Car:
    """A started sidecar on a fake clock, with a stub on a real channel."""

    def __init__(self, sidecar: Sidecar, clock: FakeClock, stub: pb_grpc.RouterStub) -> None:
        self.sidecar, self.clock, self.stub = sidecar, clock, stub

    async def route(self, cache_key: str = "", project: str | None = "alpha",
                    task_id: str = "t-1", **kw: Any) -> pb.Decision:
        labels = {"project": project} if project is not None else {}
        return await self.stub.Route(pb.RouteRequest(
            task_id=task_id, task_type="analyze_logs", priority=50,
            estimated_input_tokens=1500, max_output_tokens=400, labels=labels,
            cache_key=cache_key, **kw))

    async def report(self, d: pb.Decision, value: bytes = b"", success: bool = True,
                     **kw: Any) -> pb.OutcomeAck:
        attempts = [pb.Attempt(model=d.model, provider=d.provider,
                               status=pb.ATTEMPT_STATUS_SUCCESS, input_tokens=1500,
                               output_tokens=300)] if d.model else []
        return await self.stub.ReportOutcome(pb.Outcome(
            decision_id=d.decision_id, success=success, attempts=attempts, cache_value=value,
            **kw))

    async def store(self, cache_key: str, value: bytes, project: str = "alpha") -> pb.Decision:
        d = await self.route(cache_key, project)
        assert d.status == pb.DECISION_STATUS_ROUTED
        ack = await self.report(d, value)
        assert ack.cache_stored
        return d


async def start_car(raw: dict[str, Any], clock: FakeClock | None = None) -> tuple[
        Sidecar, FakeClock]:
    clock = clock or FakeClock()
    car = Sidecar(parse_config(yaml.safe_dump(raw), "test"), clock=clock)
    await car.start()
    return car, clock


@pytest.fixture
async def car(tmp_path: Path) -> AsyncIterator[Car]:
    sidecar, clock = await start_car(cache_config(tmp_path, ttl_s=600, max_entries=3))
    try:
        async with grpc.aio.insecure_channel(sidecar.address) as ch:
            yield Car(sidecar, clock, pb_grpc.RouterStub(ch))
    finally:
        await sidecar.stop()


async def test_a_stored_value_answers_the_next_route_as_a_cache_hit(car: Car) -> None:
    first = await car.store("health:db", b'{"healthy": true}')
    car.clock.t += 30
    hit = await car.route("health:db", task_id="t-2")
    assert hit.status == pb.DECISION_STATUS_CACHE_HIT
    assert hit.reason_code == pb.REASON_CODE_CACHE_HIT
    assert hit.cached_value == b'{"healthy": true}'
    assert hit.cache_source_decision_id == first.decision_id
    assert (hit.model, hit.provider) == (first.model, first.provider)
    assert hit.decision_id != first.decision_id and hit.task_id == "t-2"
    assert first.decision_id in hit.reason and first.model in hit.reason
    assert hit.estimated_cost_micros == 0 and not hit.budgets and not hit.fallbacks
    # Audited as a CACHE_HIT decision, like any other decision.
    assert car.sidecar.store is not None
    row = await car.sidecar.store.get_decision(hit.decision_id)
    assert row is not None
    assert (row.status, row.reason_code) == (DecisionStatus.CACHE_HIT, ReasonCode.CACHE_HIT)
    assert row.chosen_model == first.model and first.decision_id in row.reason
    # A Route without the key, or with another key, is decided as usual.
    assert (await car.route()).status == pb.DECISION_STATUS_ROUTED
    assert (await car.route("health:api")).status == pb.DECISION_STATUS_ROUTED


async def test_a_hit_reserves_nothing_and_charges_nothing(car: Car) -> None:
    await car.store("k", b"v")
    before = await car.stub.GetBudgetStatus(pb.BudgetQuery(scopes=["project:alpha"]))
    hit = await car.route("k", task_id="t-hit")
    assert hit.status == pb.DECISION_STATUS_CACHE_HIT
    ack = await car.stub.ReportOutcome(pb.Outcome(decision_id=hit.decision_id, success=True))
    assert ack.actual_cost_micros == 0 and not ack.duplicate
    after = await car.stub.GetBudgetStatus(pb.BudgetQuery(scopes=["project:alpha"]))
    assert [(b.spent_micros, b.reserved_micros) for b in after.budgets] == [
        (b.spent_micros, b.reserved_micros) for b in before.budgets]
    assert before.budgets[0].spent_micros > 0  # the stored decision itself was charged


async def test_another_project_never_sees_the_entry(car: Car) -> None:
    await car.store("shared-name", b"alpha's answer", project="alpha")
    beta = await car.route("shared-name", project="beta")
    assert beta.status == pb.DECISION_STATUS_ROUTED and not beta.cached_value
    unlabelled = await car.route("shared-name", project=None)
    assert unlabelled.status == pb.DECISION_STATUS_ROUTED
    assert (await car.route("shared-name")).status == pb.DECISION_STATUS_CACHE_HIT


async def test_a_failed_outcome_or_a_route_without_key_stores_nothing(car: Car) -> None:
    d = await car.route("k-fail")
    ack = await car.report(d, b"half an answer", success=False)
    assert not ack.cache_stored
    assert (await car.route("k-fail")).status == pb.DECISION_STATUS_ROUTED
    plain = await car.route()
    assert not (await car.report(plain, b"nowhere to go")).cache_stored
    # A repeat of a stored outcome stores nothing again.
    d = await car.route("k-dup")
    assert (await car.report(d, b"first")).cache_stored
    again = await car.report(d, b"second")
    assert again.duplicate and not again.cache_stored
    assert (await car.route("k-dup")).cached_value == b"first"


async def test_an_oversize_value_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    sidecar, _ = await start_car(cache_config(tmp_path, max_value_bytes=64))
    try:
        async with grpc.aio.insecure_channel(sidecar.address) as ch:
            c = Car(sidecar, FakeClock(), pb_grpc.RouterStub(ch))
            d = await c.route("big")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.report(d, b"x" * 65)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (err.value.details() or "").startswith("cache_value: is 65 bytes")
            ack = await c.report(d, b"x" * 64)  # nothing was recorded by the refused report
            assert not ack.duplicate and ack.cache_stored
    finally:
        await sidecar.stop()


async def test_an_entry_expires_after_its_ttl(car: Car) -> None:
    await car.store("k-ttl", b"v")
    car.clock.t += 599
    assert (await car.route("k-ttl")).status == pb.DECISION_STATUS_CACHE_HIT
    car.clock.t += 1
    assert (await car.route("k-ttl")).status == pb.DECISION_STATUS_ROUTED
    assert car.sidecar.cache is not None
    swept = await car.sidecar.cache.sweep_once()
    assert swept.expired == 1


async def test_the_least_recently_used_entries_are_evicted_beyond_max_entries(car: Car) -> None:
    for i in range(3):
        await car.store(f"k{i}", f"v{i}".encode())
        car.clock.t += 1
    assert (await car.route("k0")).status == pb.DECISION_STATUS_CACHE_HIT  # k0 used again
    car.clock.t += 1
    for i in (3, 4):
        await car.store(f"k{i}", f"v{i}".encode())
        car.clock.t += 1
    assert car.sidecar.cache is not None
    await car.sidecar.cache.sweep_once()
    stats = await car.stub.GetCacheStats(pb.CacheQuery())
    assert stats.entries == 3 and stats.max_entries == 3
    hits = {i: (await car.route(f"k{i}")).status == pb.DECISION_STATUS_CACHE_HIT
            for i in range(5)}
    assert hits == {0: True, 1: False, 2: False, 3: True, 4: True}


async def test_stats_count_hits_misses_and_savings_per_policy_and_project(car: Car) -> None:
    stored = await car.store("k", b"v")
    await car.route("k")
    await car.route("k")
    await car.route("k", project="beta")  # a miss in beta
    stats = await car.stub.GetCacheStats(pb.CacheQuery(hours=1))
    rows = {(u.policy, u.project): u for u in stats.usage}
    alpha = rows[(stored.policy, "alpha")]
    assert car.sidecar.store is not None
    ack_cost = await car.sidecar.store.get_outcome(stored.decision_id)
    assert ack_cost is not None
    assert (alpha.hits, alpha.misses, alpha.stores) == (2, 1, 1)
    assert alpha.saved_micros == 2 * ack_cost.actual_cost_micros > 0
    assert alpha.hit_rate == pytest.approx(2 / 3)
    assert (rows[(stored.policy, "beta")].misses, rows[(stored.policy, "beta")].hits) == (1, 0)
    assert (stats.total.hits, stats.total.misses) == (2, 2)
    assert stats.backend == "sqlite" and stats.entries == 1 and stats.bytes > 0
    only_beta = await car.stub.GetCacheStats(pb.CacheQuery(project="beta"))
    assert [u.project for u in only_beta.usage] == ["beta"] and only_beta.entries == 0
    # The same counts are in the routing report, and survive being written by a sweep.
    assert car.sidecar.cache is not None
    await car.sidecar.cache.sweep_once()
    report = await car.stub.GetRoutingStats(pb.StatsQuery(hours=1))
    got = {(u.policy, u.project): (u.hits, u.misses, u.saved_micros) for u in report.cache}
    assert got[(stored.policy, "alpha")] == (2, 1, alpha.saved_micros)


async def test_purge_by_project_and_everything(car: Car) -> None:
    await car.store("a", b"1", project="alpha")
    await car.store("b", b"2", project="beta")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await car.stub.PurgeCache(pb.CacheQuery())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("all:")
    assert (await car.stub.PurgeCache(pb.CacheQuery(project="alpha"))).deleted == 1
    assert (await car.route("a")).status == pb.DECISION_STATUS_ROUTED
    assert (await car.route("b", project="beta")).status == pb.DECISION_STATUS_CACHE_HIT
    assert (await car.stub.PurgeCache(pb.CacheQuery(all=True))).deleted == 1
    assert (await car.stub.GetCacheStats(pb.CacheQuery())).entries == 0


@pytest.mark.parametrize(("query", "field"), [
    (pb.CacheQuery(hours=-1), "hours"),
    (pb.CacheQuery(namespace="bad name"), "namespace"),
    (pb.CacheQuery(project="p" * 300), "project"),
])
async def test_bad_cache_queries_name_the_field(car: Car, query: pb.CacheQuery,
                                                field: str) -> None:
    for call in (car.stub.GetCacheStats, car.stub.PurgeCache):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(query)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith(f"{field}:")


async def test_a_disabled_cache_is_neither_read_nor_written(tmp_path: Path) -> None:
    sidecar, _ = await start_car(cache_config(tmp_path, enabled=False))
    try:
        async with grpc.aio.insecure_channel(sidecar.address) as ch:
            c = Car(sidecar, FakeClock(), pb_grpc.RouterStub(ch))
            d = await c.route("k")
            assert not (await c.report(d, b"v")).cache_stored
            assert (await c.route("k")).status == pb.DECISION_STATUS_ROUTED
    finally:
        await sidecar.stop()


async def test_a_reload_applies_the_new_ttl(car: Car, tmp_path: Path) -> None:
    await car.store("k", b"v")
    raw = cache_config(tmp_path, ttl_s=5, max_entries=3)
    await car.sidecar.apply_config(parse_config(yaml.safe_dump(raw), "test"))
    d = await car.store("k2", b"v2")
    assert d.status == pb.DECISION_STATUS_ROUTED
    car.clock.t += 6
    assert (await car.route("k2")).status == pb.DECISION_STATUS_ROUTED  # the new, short TTL
    assert (await car.route("k")).status == pb.DECISION_STATUS_CACHE_HIT  # stored under 600 s


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted((k, v) for k, v in s.labels.items()
                                      if not k.startswith("otel_scope"))))] = s.value
    return out


async def test_metrics_count_hits_misses_and_savings(car: Car) -> None:
    stored = await car.store("k", b"v")
    await car.route("k")
    assert car.sidecar.admin_address is not None
    # Off the loop: collecting reads the ledger on the loop, which must not be blocked.
    metrics = await asyncio.to_thread(scrape, car.sidecar.admin_address)
    labels = (("policy", stored.policy), ("project", "alpha"))
    assert metrics[("routing_cache_hits_total", labels)] == 1
    assert metrics[("routing_cache_misses_total", labels)] == 1
    saved = metrics[("routing_cache_saved_usd_total", labels)]
    assert car.sidecar.store is not None
    outcome = await car.sidecar.store.get_outcome(stored.decision_id)
    assert outcome is not None
    assert saved == pytest.approx(outcome.actual_cost_micros / 1e6)
    assert not any("'k'" in repr(k) for k in metrics if "cache" in k[0])  # no key text


async def test_the_route_span_says_hit_or_miss(tmp_path: Path) -> None:
    async with otlp_receiver() as (endpoint, got):
        raw = cache_config(tmp_path)
        raw["telemetry"] = {"exporter": "otlp_grpc", "endpoint": endpoint, "admin_listen": ""}
        sidecar, _ = await start_car(raw)
        try:
            async with grpc.aio.insecure_channel(sidecar.address) as ch:
                c = Car(sidecar, FakeClock(), pb_grpc.RouterStub(ch))
                stored = await c.store("span-key-with-prompt-words", b"v")
                hit = await c.route("span-key-with-prompt-words")
                plain = await c.route()
        finally:
            await sidecar.stop()
    by_id = {attrs(s.attributes).get("routing.decision.id"): attrs(s.attributes)
             for s in got.spans() if s.name == "routing_sidecar.v1.Router/Route"}
    assert by_id[stored.decision_id]["routing.cache.result"] == "miss"
    assert by_id[hit.decision_id]["routing.cache.result"] == "hit"
    assert by_id[hit.decision_id]["routing.cache.source_decision_id"] == stored.decision_id
    assert by_id[hit.decision_id]["routing.status"] == "CACHE_HIT"
    assert "routing.cache.result" not in by_id[plain.decision_id]
    assert "prompt-words" not in repr(got.spans())


async def test_two_sidecars_share_a_redis_cache(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    cars: list[Sidecar] = []
    try:
        for name in ("a", "b"):
            raw = cache_config(tmp_path / name, backend="redis")
            raw["fleet"] = {"redis_url": server.url, "key_prefix": "fleet-test:",
                            "on_redis_down": "local",
                            "outbox_path": str(tmp_path / name / "outbox.db")}
            cars.append((await start_car(raw))[0])
        async with grpc.aio.insecure_channel(cars[0].address) as ch_a, \
                grpc.aio.insecure_channel(cars[1].address) as ch_b:
            a = Car(cars[0], FakeClock(), pb_grpc.RouterStub(ch_a))
            b = Car(cars[1], FakeClock(), pb_grpc.RouterStub(ch_b))
            stored = await a.store("fleet-key", b"computed once")
            hit = await b.route("fleet-key")
            assert hit.status == pb.DECISION_STATUS_CACHE_HIT
            assert hit.cached_value == b"computed once"
            assert hit.cache_source_decision_id == stored.decision_id
            assert (await b.stub.GetCacheStats(pb.CacheQuery())).backend == "redis"
            # Redis gone: lookups are misses, Routes keep being answered.
            server.stop(kill=True)
            d = await b.route("fleet-key")
            assert d.status == pb.DECISION_STATUS_ROUTED
            assert not (await b.report(d, b"v")).cache_stored
            # The routing report goes on without the cache; the cache's own stats say why not.
            assert (await b.stub.GetRoutingStats(pb.StatsQuery())).cells
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await b.stub.GetCacheStats(pb.CacheQuery())
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "redis" in (err.value.details() or "")
    finally:
        for c in cars:
            await c.stop()
        server.stop()


async def test_with_the_audit_trail_in_postgres_the_cache_keeps_a_file_of_its_own(
    tmp_path: Path, pg_dsn: str,
) -> None:
    raw = cache_config(tmp_path, path=str(tmp_path / "local-cache.db"))
    raw["store"] = {"url": pg_dsn}
    sidecar, _ = await start_car(raw)
    try:
        async with grpc.aio.insecure_channel(sidecar.address) as ch:
            c = Car(sidecar, FakeClock(), pb_grpc.RouterStub(ch))
            stored = await c.store("pg-key", b"kept locally")
            hit = await c.route("pg-key")
            assert (hit.status, hit.cached_value) == (pb.DECISION_STATUS_CACHE_HIT,
                                                      b"kept locally")
            assert hit.cache_source_decision_id == stored.decision_id
    finally:
        await sidecar.stop()
    assert (tmp_path / "local-cache.db").exists()
    assert not (tmp_path / "routing.db").exists()  # the audit trail went to PostgreSQL


async def test_the_tenant_is_the_project_as_budgets_see_it(car: Car) -> None:
    # Project values are folded like budget scopes: ALPHA and alpha are one tenant.
    stored = await car.store("fold-key", b"v", project="ALPHA")
    hit = await car.route("fold-key", project="alpha")
    assert hit.status == pb.DECISION_STATUS_CACHE_HIT
    assert hit.cache_source_decision_id == stored.decision_id
    stats = await car.stub.GetCacheStats(pb.CacheQuery(project="Alpha"))
    assert stats.entries == 1 and [u.project for u in stats.usage] == ["alpha"]
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a hit checks labels as a decision does
        await car.route("fold-key", project="al pha")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("labels[project]")


async def test_a_stream_refused_after_its_cache_lookup_drops_the_read_begun_for_the_next(
    car: Car, caplog: pytest.LogCaptureFixture,
) -> None:
    # Message 0 is refused only after its cache lookup has yielded to the loop, while the
    # read begun ahead for message 1 (undecodable) is under way: the stream ends at message
    # 0, and that read is dropped (cancelled) with nothing logged.
    caplog.set_level(logging.DEBUG)
    refused = pb.RouteRequest(
        task_id="t-0", task_type="fix_bug", estimated_input_tokens=100, max_output_tokens=100,
        labels={"project": "alpha"}, cache_key="k",
        available_slots=[pb.Slot(slot_id="s", model="no-such-model")])
    async with grpc.aio.insecure_channel(car.sidecar.address) as channel:
        call = channel.stream_stream("/routing_sidecar.v1.Router/RouteStream",
                                     response_deserializer=pb.Decision.FromString)()
        await call.write(refused.SerializeToString())
        await call.write(b"\xff\xff\xff")
        await call.done_writing()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("stream message 0: available_slots[0].model")
    gc.collect()  # a task holding an error nobody retrieved says so as it is collected
    await asyncio.sleep(0)
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not logged, logged
    assert (await car.route("k2")).status == pb.DECISION_STATUS_ROUTED  # still serving
