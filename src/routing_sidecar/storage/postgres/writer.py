"""The PostgreSQL group-commit writer: the shared batching loop over one pooled connection.

A batch is BEGIN, one lookup per `Once` table, one pipelined `executemany` per distinct
statement, COMMIT: a handful of round trips however many requests share it. The `Once` check
runs inside the transaction; should another sidecar commit the same key between that check and
this batch's insert, the key's unique index fails the batch, and the job-by-job retry then finds
the key stored and skips it, so exactly one outcome per decision is written fleet-wide.

A connection lost (or a statement timed out) mid-batch leaves the outcome unknown: the
connection is dropped, every job in the batch fails with StorageError, and none is retried, so
nothing is reported done that might not be. The next batch takes a fresh connection from the
pool. See batching.py for the commit and retry rules shared with SQLite.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import asyncpg

from routing_sidecar.storage.batching import (
    BatchWriter,
    Job,
    Taken,
    accepted,
    grouped,
    once_keys,
)
from routing_sidecar.storage.postgres.dsn import Redactor
from routing_sidecar.storage.postgres.sql import once_lookup

T = TypeVar("T")
Exclusive = Callable[[asyncpg.Connection], Awaitable[Any]]

# Failures after which nobody knows whether the transaction committed, or the session is gone.
LOST = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.OperatorInterventionError,  # 57: admin shutdown, statement cancelled
    asyncpg.InterfaceError,  # the connection closed under the client
    asyncpg.exceptions.InternalClientError,  # ... while the protocol was reading its goodbye
    OSError,
    TimeoutError,
)


class ConnectionLost(Exception):
    """The batch's connection failed mid-transaction; whether it committed is unknown."""


class PgWriter(BatchWriter):
    """Owns one pooled connection; batches jobs into shared transactions."""

    def __init__(self, pool: asyncpg.Pool, redact: Redactor, *, max_batch: int = 512,
                 acquire_timeout_s: float = 5.0, keyed: Mapping[str, int] | None = None) -> None:
        super().__init__(max_batch=max_batch, name="postgres-writer")
        self._pool = pool
        self._redact = redact
        self._acquire_timeout_s = acquire_timeout_s
        self._keyed = dict(keyed or {})
        self._conn: asyncpg.Connection | None = None
        self._reconnects = 0

    @property
    def reconnects(self) -> int:
        """Connections dropped after a failure and replaced."""
        return self._reconnects

    async def run(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Await `fn(conn)` alone, in its own transaction; return its result."""
        result: T = await self._enqueue(fn)
        return result

    async def _transaction(self, jobs: list[Job]) -> list[bool]:
        async def batch(conn: asyncpg.Connection) -> list[bool]:
            accept = accepted(jobs, await _taken(conn, jobs))
            for sql, rows in grouped(jobs, accept).items():
                key = self._keyed.get(sql)
                if key:
                    rows.sort(key=lambda r: r[:key])
                await conn.executemany(sql, rows)
            return accept

        result: list[bool] = await self._exclusive(batch)
        return result

    async def _begin(self) -> tuple[asyncpg.Connection, Any]:
        """A connection with a transaction started on it.

        Nothing has been written yet, so a connection found dead here (the server restarted,
        or closed it while idle) is replaced once, and the caller never notices.
        """
        for attempt in (1, 2):
            try:
                conn = await self._connection()
                tx = conn.transaction()
                await tx.start()
                return conn, tx
            except LOST as exc:
                await self._drop()
                if attempt == 2:
                    raise ConnectionLost(f"cannot reach the store: {self._redact(exc)}") from exc
        raise AssertionError("unreachable")

    async def _exclusive(self, fn: Exclusive) -> Any:
        conn, tx = await self._begin()
        try:
            result = await fn(conn)
            await tx.commit()
        except LOST as exc:
            await self._drop()
            raise ConnectionLost("the connection was lost before the commit was confirmed: "
                                 f"{self._redact(exc)}") from exc
        except BaseException:
            if conn.is_closed():
                await self._drop()
            else:
                try:
                    await tx.rollback()
                except Exception:  # the batch's own error is the one worth reporting
                    await self._drop()
            raise
        return result

    def _outcome_unknown(self, exc: Exception) -> bool:
        return isinstance(exc, ConnectionLost)

    def _describe(self, exc: Exception) -> str:
        return self._redact(exc)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            if self._conn is not None:
                await self._drop()
            self._conn = await self._pool.acquire(timeout=self._acquire_timeout_s)
        return self._conn

    async def _drop(self) -> None:
        """Throw the connection away: its session state is unknown."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._reconnects += 1
            # A connection the server closed may already be back in the pool's hands, and
            # then refuses both calls; either way it is gone and the pool opens a new one.
            with contextlib.suppress(Exception):
                conn.terminate()
            with contextlib.suppress(Exception):
                await self._pool.release(conn)

    async def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await self._pool.release(conn, timeout=self._acquire_timeout_s)


async def _taken(conn: asyncpg.Connection, jobs: list[Job]) -> Taken:
    """The batch's `Once` keys already stored."""
    taken: Taken = set()
    for (table, column), keys in once_keys(jobs).items():
        rows = await conn.fetch(once_lookup(table, column), sorted(keys))
        taken.update((table, column, r[0]) for r in rows)
    return taken
