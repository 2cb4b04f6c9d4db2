"""The response cache in the SQLite store's file: the default `Cache` back end.

Writes go through the store's group-commit writer, so an entry shares its transaction with
whatever decisions commit at the same moment and `put` returns only once it is durable. Reads
use a read-only connection of their own, so a lookup never queues behind the audit log's
reads or waits for a write. Sweeps (expiry, then least-recently-used eviction down to the
bounds) run on the writer in small chunks, each its own transaction, so decisions keep
committing in between.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import aiosqlite
import orjson

from routing_sidecar.domain import CacheEntry
from routing_sidecar.errors import StorageError
from routing_sidecar.ports import CacheFootprint, CacheUsage, PendingStore, SweepResult
from routing_sidecar.storage.sqlite import SqliteStore
from routing_sidecar.storage.writer import GroupWriter, Job, Write

SWEEP_CHUNK = 2000  # rows deleted per transaction: short enough never to hold up a commit

_ENTRY_COLUMNS = ("key", "namespace", "project", "policy", "value", "chunks_json",
                  "source_decision_id", "model", "provider", "cost_micros", "input_tokens",
                  "output_tokens", "finish_reason", "size_bytes", "created_at", "expires_at",
                  "last_used_at")
_PUT = (f"INSERT OR REPLACE INTO cache_entries ({', '.join(_ENTRY_COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(_ENTRY_COLUMNS))})")
_GET = (f"SELECT {', '.join(_ENTRY_COLUMNS[:-2])}, expires_at FROM cache_entries "
        "WHERE key = ? AND expires_at > ?")
# A touch never moves a last use backwards (touches of one key may arrive out of order).
_TOUCH = "UPDATE cache_entries SET last_used_at = max(last_used_at, ?) WHERE key = ?"
_PENDING_COLUMNS = ("decision_id", "key", "namespace", "project", "policy", "expires_at")
_PUT_PENDING = (f"INSERT OR REPLACE INTO cache_pending ({', '.join(_PENDING_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_PENDING_COLUMNS))})")
_USAGE_COUNTS = ("hits", "misses", "stores", "saved_micros")
_ADD_USAGE = (
    "INSERT INTO cache_usage (window_start, namespace, policy, project, "
    f"{', '.join(_USAGE_COUNTS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (window_start, namespace, policy, project) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in _USAGE_COUNTS)
)


def _entry_params(e: CacheEntry) -> tuple[object, ...]:
    return (e.key, e.namespace, e.project, e.policy, e.value, orjson.dumps(e.chunks).decode(),
            e.source_decision_id, e.model, e.provider, e.cost_micros, e.input_tokens,
            e.output_tokens, e.finish_reason, e.size_bytes, e.created_at, e.expires_at,
            e.created_at)


def _entry(row: Sequence[Any]) -> CacheEntry:
    (key, namespace, project, policy, value, chunks, source, model, provider, cost, tokens_in,
     tokens_out, finish, _size, created, expires) = row
    return CacheEntry(key, namespace, project, policy, bytes(value), source, model, provider,
                      cost, created, expires, tuple(orjson.loads(chunks)), finish, tokens_in,
                      tokens_out)


def _where(namespace: str | None, project: str | None) -> tuple[str, tuple[str, ...]]:
    terms, params = [], []
    for column, value in (("namespace", namespace), ("project", project)):
        if value is not None:
            terms.append(f"{column} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(terms) if terms else ""), tuple(params)


class SqliteCache:
    """`Cache` over the tables of migration 4, sharing the store's writer."""

    def __init__(self, read: aiosqlite.Connection, writer: GroupWriter,
                 owned: SqliteStore | None = None,
                 lookups: sqlite3.Connection | None = None) -> None:
        self._read = read
        self._writer = writer
        self._owned = owned
        # Lookups by key read on the event loop: one primary-key read in WAL mode (readers
        # never wait for the writer) costs less than aiosqlite's hop to its thread and back.
        self._lookups = lookups
        self._closed = False

    @classmethod
    async def open(cls, store: SqliteStore, busy_timeout_ms: int = 5000,
                   owns_store: bool = False) -> SqliteCache:
        """A cache on an open (and so migrated) store's file; `owns_store`: close it too."""
        try:
            read = await aiosqlite.connect(store.path, isolation_level=None)
            await read.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            await read.execute("PRAGMA query_only = ON")
            lookups = sqlite3.connect(store.path, isolation_level=None)
            lookups.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise StorageError(f"{store.path}: cannot open the cache: {exc}") from exc
        return cls(read, store.writer, store if owns_store else None, lookups)

    async def close(self) -> None:
        """Close the read connection (and a store of its own); idempotent."""
        if not self._closed:
            self._closed = True
            await self._read.close()
            if self._lookups is not None:
                self._lookups.close()
            if self._owned is not None:
                await self._owned.close()

    async def _rows(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        try:
            return list(await self._read.execute_fetchall(sql, tuple(params)))
        except (sqlite3.Error, ValueError) as exc:  # ValueError: the connection is closed
            raise StorageError(f"cache read failed: {exc}") from exc

    # -- entries ---------------------------------------------------------------------------

    async def get(self, key: str, now: float) -> CacheEntry | None:
        """The live entry under a key, or None."""
        if self._lookups is None:
            rows = await self._rows(_GET, (key, now))
            return _entry(rows[0]) if rows else None
        try:
            row = self._lookups.execute(_GET, (key, now)).fetchone()
        except (sqlite3.Error, ValueError) as exc:  # ValueError: the connection is closed
            raise StorageError(f"cache read failed: {exc}") from exc
        return _entry(row) if row is not None else None

    async def put(self, entry: CacheEntry) -> None:
        """Store or replace an entry; return once committed."""
        await self._writer.submit(Job((Write(_PUT, _entry_params(entry)),)))

    async def touch(self, used: Mapping[str, float]) -> None:
        """Record last uses, in one job."""
        if used:
            await self._writer.submit(Job(tuple(Write(_TOUCH, (at, key))
                                                for key, at in used.items())))

    async def purge(self, namespace: str | None = None, project: str | None = None) -> int:
        """Delete matching entries, in chunks; return how many."""
        where, params = _where(namespace, project)
        sql = (f"DELETE FROM cache_entries WHERE key IN (SELECT key FROM cache_entries{where} "
               "LIMIT ?)")
        total = 0
        while True:
            deleted = await self._writer.run(partial(_delete, sql=sql, params=(*params,
                                                                               SWEEP_CHUNK)))
            total += deleted
            if deleted < SWEEP_CHUNK:
                return total

    async def footprint(self, namespace: str | None = None,
                        project: str | None = None) -> CacheFootprint:
        """Entries and bytes held."""
        where, params = _where(namespace, project)
        rows = await self._rows(
            f"SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM cache_entries{where}", params)
        return CacheFootprint(int(rows[0][0]), int(rows[0][1]))

    async def sweep(self, now: float, max_entries: int, max_bytes: int) -> SweepResult:
        """Expiry, then LRU eviction to `max_entries` and `max_bytes`, chunk by chunk."""
        totals = [0, 0, 0]
        while True:
            step = await self._writer.run(partial(_sweep_chunk, now=now, max_entries=max_entries,
                                                  max_bytes=max_bytes, limit=SWEEP_CHUNK))
            totals = [a + b for a, b in zip(totals, step, strict=True)]
            if max(step) < SWEEP_CHUNK:
                return SweepResult(*totals)

    # -- pending decision-mode stores ------------------------------------------------------

    async def put_pending(self, pending: PendingStore) -> None:
        """Remember where a decision's outcome stores its value; return once committed."""
        params = tuple(getattr(pending, c) for c in _PENDING_COLUMNS)
        await self._writer.submit(Job((Write(_PUT_PENDING, params),)))

    async def get_pending(self, decision_id: str, now: float) -> PendingStore | None:
        """The live pending store of a decision, or None."""
        rows = await self._rows(
            f"SELECT {', '.join(_PENDING_COLUMNS)} FROM cache_pending "
            "WHERE decision_id = ? AND expires_at > ?", (decision_id, now))
        return PendingStore(*rows[0]) if rows else None

    # -- usage -----------------------------------------------------------------------------

    async def add_usage(self, rows: Sequence[CacheUsage]) -> None:
        """Add hourly counts, in one job."""
        if rows:
            await self._writer.submit(Job(tuple(
                Write(_ADD_USAGE, (u.window_start, u.namespace, u.policy, u.project, u.hits,
                                   u.misses, u.stores, u.saved_micros))
                for u in rows)))

    async def usage(self, since: float, namespace: str | None = None,
                    project: str | None = None) -> list[CacheUsage]:
        """Counts per (namespace, policy, project) over the hours from `since`'s on."""
        where, params = _where(namespace, project)
        hour = since - since % 3600.0
        clause = f"{where} AND window_start >= ?" if where else " WHERE window_start >= ?"
        rows = await self._rows(
            f"SELECT namespace, policy, project, {', '.join(f'SUM({c})' for c in _USAGE_COUNTS)} "
            f"FROM cache_usage{clause} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3", (*params, hour))
        return [CacheUsage(hour, *r) for r in rows]


def _delete(conn: sqlite3.Connection, *, sql: str, params: tuple[object, ...]) -> int:
    return int(conn.execute(sql, params).rowcount)


def _sweep_chunk(conn: sqlite3.Connection, *, now: float, max_entries: int, max_bytes: int,
                 limit: int) -> tuple[int, int, int]:
    """One transaction's worth of sweeping: (expired, evicted, pending) rows deleted."""
    expired = _delete(conn, sql="DELETE FROM cache_entries WHERE key IN (SELECT key FROM "
                      "cache_entries WHERE expires_at <= ? LIMIT ?)", params=(now, limit))
    pending = _delete(conn, sql="DELETE FROM cache_pending WHERE decision_id IN (SELECT "
                      "decision_id FROM cache_pending WHERE expires_at <= ? LIMIT ?)",
                      params=(now, limit))
    (waiting,) = conn.execute("SELECT COUNT(*) FROM cache_pending").fetchone()
    if waiting > max_entries:  # outcomes that never came: the oldest go first
        pending += _delete(conn, sql="DELETE FROM cache_pending WHERE decision_id IN (SELECT "
                           "decision_id FROM cache_pending ORDER BY expires_at LIMIT ?)",
                           params=(min(limit, waiting - max_entries),))
    if expired >= limit:
        return expired, 0, pending  # more expired rows first: the bounds may already hold
    count, size = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM cache_entries").fetchone()
    over = max(0, count - max_entries)
    victims: list[tuple[str]] = []
    if over or size > max_bytes:
        freed = 0
        for key, weight in conn.execute(
                "SELECT key, size_bytes FROM cache_entries ORDER BY last_used_at, key LIMIT ?",
                (limit,)):
            if len(victims) >= over and size - freed <= max_bytes:
                break
            victims.append((key,))
            freed += weight
        conn.executemany("DELETE FROM cache_entries WHERE key = ?", victims)
    return expired, len(victims), pending
