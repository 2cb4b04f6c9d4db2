"""The response cache in Redis, shared by every sidecar of a fleet: a `Cache` back end.

Keys (all under one hash tag, so a Redis Cluster keeps them on one slot and scripts may touch
them together), with P the configured prefix:

    P{cache}:e:<digest>   hash: v (the value), m (the entry's other fields, JSON)
    P{cache}:lru          sorted set digest -> last use    (least-recently-used eviction)
    P{cache}:exp          sorted set digest -> expiry      (sweeping expired entries)
    P{cache}:size         hash digest -> bytes;  P{cache}:bytes  their sum
    P{cache}:tag          hash digest -> [namespace, project]  (filtered stats and purges)
    P{cache}:p:<decision> pending decision-mode store (JSON), with P{cache}:pidx its expiry
    P{cache}:u:<hour>     hash of usage counts, with P{cache}:uidx the hours recorded

Entries also carry a native expiry, so Redis frees an entry's memory on time even if no
sidecar sweeps. Writes that touch several keys are Lua scripts: atomic, so the byte count
always matches the entries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from routing_sidecar.domain import CacheEntry
from routing_sidecar.errors import StorageError
from routing_sidecar.ports import CacheFootprint, CacheUsage, PendingStore, SweepResult

SWEEP_CHUNK = 500  # digests per script call: keeps each call short on a shared server
USAGE_KEEP_S = 400 * 86_400.0
HOUR_S = 3600.0

# KEYS: entry, lru, exp, size, tag, bytes.  ARGV: digest, value, meta, size, last use,
# expiry, native ttl (ms), tag.
_PUT = """
local old = redis.call('HGET', KEYS[4], ARGV[1])
if old then redis.call('DECRBY', KEYS[6], old) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'm', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[8])
redis.call('INCRBY', KEYS[6], ARGV[4])
return 1
"""

# KEYS: lru, exp, size, tag, bytes, then one entry key per digest.  ARGV: the digests.
_DELETE = """
local n = 0
for i, d in ipairs(ARGV) do
  local s = redis.call('HGET', KEYS[3], d)
  if s then
    redis.call('DECRBY', KEYS[5], s)
    redis.call('HDEL', KEYS[3], d)
    n = n + 1
  end
  redis.call('DEL', KEYS[5 + i])
  redis.call('ZREM', KEYS[1], d)
  redis.call('ZREM', KEYS[2], d)
  redis.call('HDEL', KEYS[4], d)
end
return n
"""


async def _io(call: Awaitable[Any] | Any) -> Any:
    """Await a redis-py command, as a StorageError when it fails.

    redis-py types its commands as "a value or an awaitable of it" (one signature for the sync
    and asyncio clients), so their results are taken as Any here and typed by their callers.
    """
    try:
        if isinstance(call, Awaitable):
            return await call
        return call
    except RedisError as exc:
        raise StorageError(f"cache (redis): {type(exc).__name__}: {exc}") from exc


def _meta(e: CacheEntry) -> bytes:
    return orjson.dumps({
        "namespace": e.namespace, "project": e.project, "policy": e.policy,
        "source_decision_id": e.source_decision_id, "model": e.model, "provider": e.provider,
        "cost_micros": e.cost_micros, "created_at": e.created_at, "expires_at": e.expires_at,
        "chunks": e.chunks, "finish_reason": e.finish_reason, "input_tokens": e.input_tokens,
        "output_tokens": e.output_tokens,
    })


def _from_meta(key: str, value: bytes, meta: bytes) -> CacheEntry:
    m = orjson.loads(meta)
    return CacheEntry(key, m["namespace"], m["project"], m["policy"], value,
                      m["source_decision_id"], m["model"], m["provider"], m["cost_micros"],
                      m["created_at"], m["expires_at"], tuple(m["chunks"]), m["finish_reason"],
                      m["input_tokens"], m["output_tokens"])


def _matches(tag: bytes, namespace: str | None, project: str | None) -> bool:
    ns, proj = orjson.loads(tag)
    return (namespace is None or ns == namespace) and (project is None or proj == project)


class RedisCache:
    """`Cache` on a Redis server (or a cluster's slot), keys under `prefix`."""

    def __init__(self, client: aioredis.Redis, prefix: str = "routing:", *,
                 owns_client: bool = False) -> None:
        self._r = client
        self._owns_client = owns_client  # else the client is shared (the fleet's) and stays open
        base = f"{prefix}{{cache}}:"
        self._entry = base + "e:"
        self._lru, self._exp = base + "lru", base + "exp"
        self._size, self._tag, self._bytes = base + "size", base + "tag", base + "bytes"
        self._pending, self._pidx = base + "p:", base + "pidx"
        self._usage, self._uidx = base + "u:", base + "uidx"
        self._put_script = client.register_script(_PUT)
        self._delete_script = client.register_script(_DELETE)
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, password: str | None = None, prefix: str = "routing:",
                   timeout_s: float = 2.0, max_connections: int = 32) -> RedisCache:
        """Connect to `url` and check the server answers (a failed start says why, once).

        Requests beyond `max_connections` wait up to `timeout_s` for a free connection
        instead of failing.
        """
        pool = aioredis.BlockingConnectionPool.from_url(
            url, password=password, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            max_connections=max_connections, timeout=timeout_s)
        client = aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it
        try:
            await _io(client.ping())
        except StorageError:
            await client.aclose()
            raise
        return cls(client, prefix, owns_client=True)

    async def close(self) -> None:
        """Close the connection pool when it is this cache's own; idempotent."""
        if not self._closed:
            self._closed = True
            if self._owns_client:
                await self._r.aclose()

    # -- entries ---------------------------------------------------------------------------

    async def get(self, key: str, now: float) -> CacheEntry | None:
        """The live entry under a key, or None."""
        value, meta = await _io(self._r.hmget(self._entry + key, ["v", "m"]))
        if value is None or meta is None:
            return None
        entry = _from_meta(key, value, meta)
        return entry if entry.expires_at > now else None

    async def put(self, entry: CacheEntry) -> None:
        """Store or replace an entry atomically with its indexes and the byte count."""
        ttl_ms = max(1, int((entry.expires_at - entry.created_at) * 1000))
        tag = orjson.dumps([entry.namespace, entry.project])
        await _io(self._put_script(
            keys=[self._entry + entry.key, self._lru, self._exp, self._size, self._tag,
                  self._bytes],
            args=[entry.key, entry.value, _meta(entry), entry.size_bytes, entry.created_at,
                  entry.expires_at, ttl_ms, tag]))

    async def touch(self, used: Mapping[str, float]) -> None:
        """Move last uses forward (only for entries still there)."""
        if used:
            await _io(self._r.zadd(self._lru, dict(used), xx=True, gt=True))

    async def _delete(self, digests: Sequence[str]) -> int:
        total = 0
        for i in range(0, len(digests), SWEEP_CHUNK):
            chunk = list(digests[i:i + SWEEP_CHUNK])
            keys = [self._lru, self._exp, self._size, self._tag, self._bytes,
                    *(self._entry + d for d in chunk)]
            total += int(await _io(self._delete_script(keys=keys, args=chunk)))
        return total

    async def _tagged(self, namespace: str | None, project: str | None) -> list[str]:
        found: list[str] = []
        cursor: Any = 0
        while True:
            cursor, batch = await _io(self._r.hscan(self._tag, cursor, count=1000))
            found += [d.decode() for d, tag in batch.items() if _matches(tag, namespace, project)]
            if not cursor:
                return found

    async def purge(self, namespace: str | None = None, project: str | None = None) -> int:
        """Delete the matching entries; return how many."""
        if namespace is None and project is None:
            digests = [d.decode() for d in await _io(self._r.zrange(self._lru, 0, -1))]
        else:
            digests = await self._tagged(namespace, project)
        return await self._delete(digests)

    async def footprint(self, namespace: str | None = None,
                        project: str | None = None) -> CacheFootprint:
        """Entries and bytes held."""
        if namespace is None and project is None:
            entries = await _io(self._r.zcard(self._lru))
            size = await _io(self._r.get(self._bytes))
            return CacheFootprint(int(entries), int(size or 0))
        digests = await self._tagged(namespace, project)
        sizes = await _io(self._r.hmget(self._size, digests)) if digests else []
        return CacheFootprint(len(digests), sum(int(s) for s in sizes if s is not None))

    async def sweep(self, now: float, max_entries: int, max_bytes: int) -> SweepResult:
        """Expired entries, expired pending stores, then LRU eviction to the bounds."""
        expired = 0
        while batch := await _io(self._r.zrangebyscore(self._exp, "-inf", now, start=0,
                                                        num=SWEEP_CHUNK)):
            expired += await self._delete([d.decode() for d in batch])
        pending = await self._sweep_pending(now, max_entries)
        await self._sweep_usage(now)
        evicted = 0
        over = int(await _io(self._r.zcard(self._lru))) - max_entries
        if over > 0:
            oldest = await _io(self._r.zrange(self._lru, 0, over - 1))
            evicted += await self._delete([d.decode() for d in oldest])
        excess = int(await _io(self._r.get(self._bytes)) or 0) - max_bytes
        while excess > 0:
            oldest = [d.decode() for d in await _io(self._r.zrange(self._lru, 0,
                                                                   SWEEP_CHUNK - 1))]
            if not oldest:
                break
            sizes = await _io(self._r.hmget(self._size, oldest))
            victims = []
            for digest, size in zip(oldest, sizes, strict=True):
                if excess <= 0:
                    break
                victims.append(digest)
                excess -= int(size or 0)
            evicted += await self._delete(victims)
        return SweepResult(expired, evicted, pending)

    # -- pending decision-mode stores ------------------------------------------------------

    async def put_pending(self, pending: PendingStore) -> None:
        """Remember where a decision's outcome stores its value."""
        doc = orjson.dumps({"key": pending.key, "namespace": pending.namespace,
                            "project": pending.project, "policy": pending.policy,
                            "expires_at": pending.expires_at})
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.set(self._pending + pending.decision_id, doc)
            pipe.zadd(self._pidx, {pending.decision_id: pending.expires_at})
            await _io(pipe.execute())

    async def get_pending(self, decision_id: str, now: float) -> PendingStore | None:
        """The live pending store of a decision, or None."""
        raw = await _io(self._r.get(self._pending + decision_id))
        if raw is None:
            return None
        d = orjson.loads(raw)
        if d["expires_at"] <= now:
            return None
        return PendingStore(decision_id, d["key"], d["namespace"], d["project"], d["policy"],
                            d["expires_at"])

    async def _drop_pending(self, ids: Sequence[bytes]) -> int:
        if not ids:
            return 0
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(*(self._pending + i.decode() for i in ids))
            pipe.zrem(self._pidx, *ids)
            await _io(pipe.execute())
        return len(ids)

    async def _sweep_pending(self, now: float, max_entries: int) -> int:
        dropped = 0
        while batch := await _io(self._r.zrangebyscore(self._pidx, "-inf", now, start=0,
                                                        num=SWEEP_CHUNK)):
            dropped += await self._drop_pending(batch)
        over = int(await _io(self._r.zcard(self._pidx))) - max_entries
        if over > 0:
            dropped += await self._drop_pending(await _io(self._r.zrange(self._pidx, 0,
                                                                         over - 1)))
        return dropped

    # -- usage -----------------------------------------------------------------------------

    async def add_usage(self, rows: Sequence[CacheUsage]) -> None:
        """Add hourly counts, in one transaction."""
        if not rows:
            return
        async with self._r.pipeline(transaction=True) as pipe:
            for u in rows:
                hour = f"{self._usage}{int(u.window_start)}"
                for name in ("hits", "misses", "stores", "saved_micros"):
                    count = getattr(u, name)
                    if count:
                        field = orjson.dumps([u.namespace, u.policy, u.project, name])
                        pipe.hincrby(hour, field, count)
                pipe.zadd(self._uidx, {str(int(u.window_start)): u.window_start})
            await _io(pipe.execute())

    async def usage(self, since: float, namespace: str | None = None,
                    project: str | None = None) -> list[CacheUsage]:
        """Counts per (namespace, policy, project) over the hours from `since`'s on."""
        hour = since - since % HOUR_S
        sums: dict[tuple[str, str, str], dict[str, int]] = {}
        for window in await _io(self._r.zrangebyscore(self._uidx, hour, "+inf")):
            counts = await _io(self._r.hgetall(self._usage + window.decode()))
            for field, count in counts.items():
                ns, policy, proj, name = orjson.loads(field)
                if (namespace is None or ns == namespace) and (project is None
                                                               or proj == project):
                    cell = sums.setdefault((ns, policy, proj), {})
                    cell[name] = cell.get(name, 0) + int(count)
        return [CacheUsage(hour, ns, policy, proj, **counts)
                for (ns, policy, proj), counts in sorted(sums.items())]

    async def _sweep_usage(self, now: float) -> None:
        old = await _io(self._r.zrangebyscore(self._uidx, "-inf", now - USAGE_KEEP_S))
        if old:
            await _io(self._r.delete(*(self._usage + w.decode() for w in old)))
            await _io(self._r.zrem(self._uidx, *old))
