"""Group commit: one task owns the write connection and commits queued jobs in batches.

Callers `await submit(job)`; the writer takes everything queued (up to `max_batch` jobs), runs
it in ONE transaction with one `executemany` per distinct statement, commits, and only then
resolves each caller's future. The whole transaction is one call on the writer's own thread
(a stdlib sqlite3 connection behind a one-thread executor): a thread hop per statement, as
aiosqlite would make, cost more than the statements themselves. While a batch commits, new
jobs queue up and form the next batch, so the commit cost is shared by however many requests
arrived meanwhile, with no timer. A failed batch is rolled back and every future in it fails
with StorageError: nothing in it was acknowledged. A job whose caller went away (cancelled) is
still written, because the in-memory ledger already counts it and disk must agree with memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from routing_sidecar.errors import StorageError

T = TypeVar("T")
Exclusive = Callable[[sqlite3.Connection], Any]


@dataclass(frozen=True, slots=True)
class Write:
    """One parameterised statement."""

    sql: str
    params: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Once:
    """Skip the job unless `key` is absent from `table.column` and unclaimed in its batch."""

    table: str
    column: str
    key: str


@dataclass(frozen=True, slots=True)
class Job:
    """One caller's writes, committed all together or not at all."""

    writes: tuple[Write, ...]
    once: Once | None = None


_Item = tuple[Job | Exclusive, "asyncio.Future[Any]"]


class GroupWriter:
    """Owns the write connection; batches jobs into shared transactions."""

    def __init__(
        self, conn: sqlite3.Connection, executor: ThreadPoolExecutor, *, max_batch: int = 512
    ) -> None:
        self._conn = conn
        self._executor = executor
        self._max_batch = max_batch
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._commits = 0
        self._jobs = 0
        self._failed_batches = 0

    @property
    def commits(self) -> int:
        """Transactions committed so far (batches plus exclusive runs)."""
        return self._commits

    @property
    def jobs(self) -> int:
        """Jobs committed so far (skipped `Once` jobs included)."""
        return self._jobs

    @property
    def failed_batches(self) -> int:
        """Transactions rolled back after an error."""
        return self._failed_batches

    def start(self) -> None:
        """Start the writer task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="sqlite-writer")

    async def submit(self, job: Job) -> bool:
        """Queue a job; return after its batch commits: True, or False if `once` skipped it."""
        return bool(await self._enqueue(job))

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` alone, on the writer thread, in its own transaction; return its result."""
        result: T = await self._enqueue(fn)
        return result

    async def close(self) -> None:
        """Commit everything already queued, then stop and close the connection."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self._in_thread(self._conn.close)
        self._executor.shutdown(wait=True)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _enqueue(self, item: Job | Exclusive) -> Any:
        if self._closing or self._task is None:
            raise StorageError("the store is closed")
        if self._task.done():
            raise StorageError("the store writer stopped")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._wake.set()
        return await future

    async def _loop(self) -> None:
        try:
            while self._queue or not self._closing:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                head, future = self._queue[0]
                if isinstance(head, Job):
                    await self._commit_jobs(self._take_jobs())
                else:
                    self._queue.popleft()
                    await self._run_exclusive(head, future)
        finally:
            # Only reached with work left if the task was cancelled: fail it, never hang it.
            while self._queue:
                _fail(self._queue.popleft()[1], "the store writer stopped")

    def _take_jobs(self) -> list[tuple[Job, asyncio.Future[Any]]]:
        batch: list[tuple[Job, asyncio.Future[Any]]] = []
        while self._queue and len(batch) < self._max_batch:
            item, future = self._queue[0]
            if not isinstance(item, Job):
                break
            self._queue.popleft()
            batch.append((item, future))
        return batch

    async def _commit_jobs(self, batch: list[tuple[Job, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._in_thread(self._write_jobs, [job for job, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                _fail(future, "the store writer stopped")
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                _fail(future, f"write failed: {result}")
            elif not future.done():
                future.set_result(result)

    def _write_jobs(self, jobs: list[Job]) -> list[bool | Exception]:
        """On the writer thread: the batch in one transaction, or job by job if that fails.

        One bad job (a duplicate key, say) must not fail the requests that happened to share
        its batch, so a failed batch is retried one job per transaction.
        """
        try:
            accepted: list[bool | Exception] = list(self._write_batch(jobs))
        except Exception as exc:
            self._failed_batches += 1
            if len(jobs) == 1:
                return [exc]
            return [self._write_alone(job) for job in jobs]
        self._commits += 1
        self._jobs += len(jobs)
        return accepted

    def _write_alone(self, job: Job) -> bool | Exception:
        try:
            ok = self._write_batch([job])[0]
        except Exception as exc:
            self._failed_batches += 1
            return exc
        self._commits += 1
        self._jobs += 1
        return ok

    def _write_batch(self, jobs: list[Job]) -> list[bool]:
        """On the writer thread: one transaction for the whole batch."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            accepted = self._accepted(jobs)
            grouped: dict[str, list[tuple[object, ...]]] = {}
            for job, ok in zip(jobs, accepted, strict=True):
                for w in job.writes if ok else ():
                    grouped.setdefault(w.sql, []).append(w.params)
            for sql, rows in grouped.items():
                conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return accepted

    def _accepted(self, jobs: list[Job]) -> list[bool]:
        """Which jobs run: a `Once` key already stored, or claimed earlier in the batch, skips."""
        wanted: dict[tuple[str, str], set[str]] = {}
        for job in jobs:
            if job.once is not None:
                wanted.setdefault((job.once.table, job.once.column), set()).add(job.once.key)
        taken: set[tuple[str, str, str]] = set()
        for (table, column), keys in wanted.items():
            marks = ",".join("?" * len(keys))
            rows = self._conn.execute(
                f"SELECT {column} FROM {table} WHERE {column} IN ({marks})", tuple(keys)
            ).fetchall()
            taken.update((table, column, row[0]) for row in rows)
        accepted = []
        for job in jobs:
            tag = (job.once.table, job.once.column, job.once.key) if job.once else None
            accepted.append(tag is None or tag not in taken)
            if tag is not None:
                taken.add(tag)
        return accepted

    def _exclusive(self, fn: Exclusive) -> Any:
        """On the writer thread: `fn` in a transaction of its own."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self._conn)
            self._conn.execute("COMMIT")
        except BaseException:
            _rollback(self._conn)
            raise
        return result

    async def _run_exclusive(self, fn: Exclusive, future: asyncio.Future[Any]) -> None:
        try:
            result = await self._in_thread(self._exclusive, fn)
        except asyncio.CancelledError:
            _fail(future, "the store writer stopped")
            raise
        except Exception as exc:
            self._failed_batches += 1
            _fail(future, f"write failed: {exc}")
            return
        self._commits += 1
        if not future.done():
            future.set_result(result)


def _rollback(conn: sqlite3.Connection) -> None:
    # The batch already failed; its error is the one worth reporting, not the rollback's.
    with contextlib.suppress(Exception):
        conn.rollback()


def _fail(future: asyncio.Future[Any], message: str) -> None:
    if not future.done():
        future.set_exception(StorageError(message))
