"""The Cache port's contract, run against every back end: SQLite and a real redis-server."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from routing_sidecar.domain import CacheEntry
from routing_sidecar.errors import StorageError
from routing_sidecar.ports import Cache, CacheUsage, PendingStore
from routing_sidecar.storage import SqliteStore
from routing_sidecar.storage.redis.cache import RedisCache
from routing_sidecar.storage.sqlite_cache import SqliteCache
from tests.fakes import JAN_31, FakeClock
from tests.redis_server import RedisServer

NOW = JAN_31
HOUR = 3600.0
_prefixes = itertools.count()


def entry(key: str, *, namespace: str = "", project: str = "alpha", at: float = NOW,
          ttl: float = 600.0, value: bytes = b"answer", **kw: object) -> CacheEntry:
    fields: dict[str, object] = {
        "key": key, "namespace": namespace, "project": project, "policy": "normal",
        "value": value, "source_decision_id": f"d-{key}", "model": "gpt-5-mini",
        "provider": "openai", "cost_micros": 1234, "created_at": at, "expires_at": at + ttl,
    }
    fields.update(kw)
    return CacheEntry(**fields)  # type: ignore[arg-type]


@dataclass
class Backend:
    cache: Cache
    reopen: Callable[[], Awaitable[Cache]]


async def _sqlite(tmp_path: Path) -> AsyncIterator[Backend]:
    path = str(tmp_path / "cache.db")
    opened: list[tuple[SqliteStore, SqliteCache]] = []

    async def open_() -> Cache:
        store = await SqliteStore.open(path, retention_days=30, clock=FakeClock())
        cache = await SqliteCache.open(store)
        opened.append((store, cache))
        return cache

    async def reopen() -> Cache:
        store, cache = opened[-1]
        await cache.close()
        await store.close()
        return await open_()

    yield Backend(await open_(), reopen)
    for store, cache in opened:
        await cache.close()
        await store.close()


async def _redis(tmp_path: Path) -> AsyncIterator[Backend]:
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    prefix = f"test{next(_prefixes)}:"
    opened = [await RedisCache.open(server.url, prefix=prefix)]

    async def reopen() -> Cache:
        nonlocal server
        await opened[-1].close()
        server.stop()
        server.start()
        opened.append(await RedisCache.open(server.url, prefix=prefix))
        return opened[-1]

    try:
        yield Backend(opened[0], reopen)
    finally:
        for c in opened:
            await c.close()
        server.stop()


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    gen = _sqlite(tmp_path) if request.param == "sqlite" else _redis(tmp_path)
    b = await gen.__anext__()
    try:
        yield b
    finally:
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()


async def test_an_entry_comes_back_whole(backend: Backend) -> None:
    e = entry("k1", value=b"\x00binary\xffvalue\n", chunks=(3, 0, 11), finish_reason="stop",
              input_tokens=17, output_tokens=9, namespace="nightly")
    await backend.cache.put(e)
    assert await backend.cache.get("k1", NOW) == e
    assert await backend.cache.get("other", NOW) is None


async def test_an_entry_is_served_until_it_expires(backend: Backend) -> None:
    await backend.cache.put(entry("k1", ttl=60.0))
    assert await backend.cache.get("k1", NOW + 59.9) is not None
    assert await backend.cache.get("k1", NOW + 60.0) is None


async def test_a_put_replaces_and_bytes_count_once(backend: Backend) -> None:
    await backend.cache.put(entry("k1", value=b"x" * 100))
    await backend.cache.put(entry("k1", value=b"y" * 40, source_decision_id="d-new"))
    got = await backend.cache.get("k1", NOW)
    assert got is not None and got.value == b"y" * 40 and got.source_decision_id == "d-new"
    fp = await backend.cache.footprint()
    assert (fp.entries, fp.bytes) == (1, entry("k1", value=b"y" * 40).size_bytes)


async def test_footprint_and_purge_by_namespace_and_project(backend: Backend) -> None:
    rows = [entry("a1", project="alpha"), entry("a2", project="alpha", namespace="n"),
            entry("b1", project="beta"), entry("b2", project="beta", namespace="n")]
    for e in rows:
        await backend.cache.put(e)
    c = backend.cache
    assert (await c.footprint()).entries == 4
    assert (await c.footprint(project="alpha")).entries == 2
    assert (await c.footprint(namespace="n")).entries == 2
    assert (await c.footprint(namespace="n", project="beta")).bytes == rows[3].size_bytes
    assert await c.purge(namespace="n", project="beta") == 1
    assert await c.get("b2", NOW) is None and await c.get("a2", NOW) is not None
    assert await c.purge(project="alpha") == 2
    assert await c.purge(namespace="") == 1  # the default namespace is a namespace too
    assert (await c.footprint()).entries == 0
    await c.put(entry("z"))
    assert await c.purge() == 1
    assert await c.get("z", NOW) is None


async def test_sweep_drops_expired_entries(backend: Backend) -> None:
    await backend.cache.put(entry("short", ttl=10.0))
    await backend.cache.put(entry("long", ttl=1000.0))
    result = await backend.cache.sweep(NOW + 20.0, max_entries=100, max_bytes=1 << 20)
    assert (result.expired, result.evicted) == (1, 0)
    fp = await backend.cache.footprint()
    assert fp.entries == 1 and fp.bytes == entry("long").size_bytes
    assert await backend.cache.get("long", NOW + 20.0) is not None


async def test_sweep_evicts_least_recently_used_beyond_max_entries(backend: Backend) -> None:
    for i in range(5):
        await backend.cache.put(entry(f"k{i}", at=NOW + i))
    # k0 and k1 were stored first but used since: k2 and k3 are now the least recently used.
    await backend.cache.touch({"k0": NOW + 10, "k1": NOW + 11})
    await backend.cache.touch({"k0": NOW + 5})  # a late, older touch moves nothing back
    result = await backend.cache.sweep(NOW + 12, max_entries=3, max_bytes=1 << 20)
    assert result.evicted == 2
    kept = [k for k in ("k0", "k1", "k2", "k3", "k4") if await backend.cache.get(k, NOW + 12)]
    assert kept == ["k0", "k1", "k4"]


async def test_sweep_evicts_down_to_max_bytes(backend: Backend) -> None:
    for i in range(4):
        await backend.cache.put(entry(f"k{i}", at=NOW + i, value=b"v" * 1000))
    size = entry("k0", value=b"v" * 1000).size_bytes
    result = await backend.cache.sweep(NOW + 5, max_entries=100, max_bytes=2 * size + 10)
    assert result.evicted == 2
    fp = await backend.cache.footprint()
    assert fp.entries == 2 and fp.bytes <= 2 * size + 10
    assert await backend.cache.get("k3", NOW + 5) is not None
    assert await backend.cache.get("k0", NOW + 5) is None


async def test_sweep_over_many_chunks(backend: Backend) -> None:
    for start in range(0, 2600, 100):
        await asyncio.gather(*(backend.cache.put(entry(f"k{i:04d}", at=NOW + i / 1000, ttl=5.0))
                               for i in range(start, start + 100)))
    result = await backend.cache.sweep(NOW + 100, max_entries=10, max_bytes=1 << 30)
    assert (result.expired, result.evicted) == (2600, 0)
    assert (await backend.cache.footprint()).entries == 0


async def test_pending_stores_expire_and_are_bounded(backend: Backend) -> None:
    c = backend.cache
    p = PendingStore("d1", "key1", "", "alpha", "normal", NOW + 100)
    await c.put_pending(p)
    assert await c.get_pending("d1", NOW) == p
    assert await c.get_pending("d1", NOW + 100) is None
    assert await c.get_pending("nope", NOW) is None
    for i in range(2, 6):
        await c.put_pending(replace(p, decision_id=f"d{i}", expires_at=NOW + 100 + i))
    result = await c.sweep(NOW + 1, max_entries=2, max_bytes=1 << 20)
    assert result.pending == 3  # five waiting, two allowed: the three expiring first go
    assert [i for i in range(1, 6) if await c.get_pending(f"d{i}", NOW + 1)] == [4, 5]


async def test_usage_adds_up_per_hour_and_filters(backend: Backend) -> None:
    hour = NOW - NOW % HOUR
    c = backend.cache
    await c.add_usage([CacheUsage(hour, "", "normal", "alpha", hits=2, misses=1,
                                  saved_micros=300)])
    await c.add_usage([CacheUsage(hour, "", "normal", "alpha", hits=1, stores=1,
                                  saved_micros=50),
                       CacheUsage(hour, "n", "code", "beta", misses=4),
                       CacheUsage(hour - 5 * HOUR, "", "normal", "alpha", hits=100)])
    rows = await c.usage(hour)
    assert rows == [CacheUsage(hour, "", "normal", "alpha", 3, 1, 1, 350),
                    CacheUsage(hour, "n", "code", "beta", 0, 4, 0, 0)]
    assert [r.project for r in await c.usage(hour, project="beta")] == ["beta"]
    assert [r.namespace for r in await c.usage(hour, namespace="")] == [""]
    older = await c.usage(hour - 6 * HOUR, project="alpha")
    assert older[0].hits == 103


async def test_entries_survive_a_restart(backend: Backend) -> None:
    e = entry("durable", value=b"kept", chunks=(2, 2))
    await backend.cache.put(e)
    await backend.cache.put_pending(PendingStore("d9", "k9", "", "alpha", "normal", NOW + 50))
    cache = await backend.reopen()
    assert await cache.get("durable", NOW) == e
    assert await cache.get_pending("d9", NOW) is not None
    assert (await cache.footprint()).bytes == e.size_bytes


async def test_concurrent_puts_all_land(backend: Backend) -> None:
    await asyncio.gather(*(backend.cache.put(entry(f"c{i}", value=bytes([i]) * i))
                           for i in range(50)))
    fp = await backend.cache.footprint()
    assert fp.entries == 50
    assert fp.bytes == sum(entry(f"c{i}", value=bytes([i]) * i).size_bytes for i in range(50))
    got = await asyncio.gather(*(backend.cache.get(f"c{i}", NOW) for i in range(50)))
    assert [g.value if g else None for g in got] == [bytes([i]) * i for i in range(50)]


async def test_redis_down_is_a_storage_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    cache = await RedisCache.open(server.url, timeout_s=0.5)
    try:
        server.stop(kill=True)
        with pytest.raises(StorageError, match="cache"):
            await cache.get("k", NOW)
    finally:
        await cache.close()


async def test_redis_refuses_to_start_without_a_server() -> None:
    from tests.conftest import free_port

    with pytest.raises(StorageError, match="ConnectionError"):
        await RedisCache.open(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)


async def test_redis_with_a_password(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password="s3cret-pw").start()
    try:
        with pytest.raises(StorageError) as err:
            await RedisCache.open(server.url, timeout_s=0.5)
        assert "s3cret-pw" not in str(err.value)
        cache = await RedisCache.open(server.url, password="s3cret-pw")
        await cache.put(entry("k"))
        assert await cache.get("k", NOW) is not None
        await cache.close()
    finally:
        server.stop()
