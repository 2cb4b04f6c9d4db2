"""Group commit, shared by both stores: one task owns the write connection and batches jobs.

Callers `await submit(job)`; the writer takes everything queued (up to `max_batch` jobs), runs
it in ONE transaction, commits, and only then resolves each caller's future. While a batch
commits, new jobs queue up and form the next batch, so the commit cost is shared by however
many requests arrived meanwhile, with no timer. A failed batch is rolled back and retried one
job per transaction, so one bad write (a duplicate key, say) fails only its own request; a
failure that leaves the outcome unknown (a connection lost mid-commit) is not retried and fails
every job in the batch with StorageError: nothing in it was acknowledged. A job whose caller
went away (cancelled) is still written, because the in-memory ledger already counts it and the
store must agree with memory.

Each store supplies the dialect: how one batch runs in a transaction (`_transaction`), how an
exclusive function runs (`_exclusive`), which errors leave the outcome unknown, and closing.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from routing_sidecar.errors import StorageError
from routing_sidecar.quick_init import quick_init


@quick_init
@dataclass(frozen=True, slots=True)
class Write:
    """One parameterised statement."""

    sql: str
    params: tuple[object, ...]


@quick_init
@dataclass(frozen=True, slots=True)
class Once:
    """Skip the job unless `key` is absent from `table.column` and unclaimed in its batch."""

    table: str
    column: str
    key: str


@quick_init
@dataclass(frozen=True, slots=True)
class Job:
    """One caller's writes, committed all together or not at all."""

    writes: tuple[Write, ...]
    once: Once | None = None


Taken = set[tuple[str, str, str]]
_Item = tuple[Job | Callable[[Any], Any], "asyncio.Future[Any]"]


def once_keys(jobs: Iterable[Job]) -> dict[tuple[str, str], set[str]]:
    """The `Once` keys a batch asks about, per (table, column), for one lookup each."""
    wanted: dict[tuple[str, str], set[str]] = {}
    for job in jobs:
        if job.once is not None:
            wanted.setdefault((job.once.table, job.once.column), set()).add(job.once.key)
    return wanted


def accepted(jobs: Iterable[Job], taken: Taken) -> list[bool]:
    """Which jobs run: a `Once` key already stored (in `taken`) or claimed earlier skips."""
    claimed = set(taken)
    result = []
    for job in jobs:
        tag = (job.once.table, job.once.column, job.once.key) if job.once else None
        result.append(tag is None or tag not in claimed)
        if tag is not None:
            claimed.add(tag)
    return result


def grouped(jobs: Iterable[Job], accept: Iterable[bool]) -> dict[str, list[tuple[object, ...]]]:
    """The accepted jobs' parameters per distinct statement, in submission order."""
    out: dict[str, list[tuple[object, ...]]] = {}
    for job, ok in zip(jobs, accept, strict=True):
        for w in job.writes if ok else ():
            out.setdefault(w.sql, []).append(w.params)
    return out


class BatchWriter(ABC):
    """Owns the write connection; batches jobs into shared transactions."""

    def __init__(self, *, max_batch: int = 512, name: str = "store-writer") -> None:
        self._max_batch = max_batch
        self._name = name
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._busy = False  # the writer task holds a batch or an exclusive run
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
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=self._name)

    async def submit(self, job: Job) -> bool:
        """Queue a job; return after its batch commits: True, or False if `once` skipped it."""
        return bool(await self._enqueue(job))

    async def close(self) -> None:
        """Commit everything already queued, then stop and close the connection."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self._close_connection()

    # -- what each dialect supplies ------------------------------------------------------

    @abstractmethod
    async def _transaction(self, jobs: list[Job]) -> list[bool]:
        """Run the batch in one transaction and commit it; return which jobs ran."""

    @abstractmethod
    async def _exclusive(self, fn: Callable[[Any], Any]) -> Any:
        """Run `fn` on the connection in a transaction of its own; return its result."""

    @abstractmethod
    async def _close_connection(self) -> None:
        """Release the write connection."""

    def _outcome_unknown(self, exc: Exception) -> bool:
        """True when a failed transaction may or may not have committed (connection lost)."""
        return False

    # -- the loop ------------------------------------------------------------------------

    def _idle(self) -> bool:
        """True when nothing is queued or committing: a job may commit at once, in order."""
        return not self._queue and not self._busy

    def _check_open(self) -> None:
        if self._closing or self._task is None:
            raise StorageError("the store is closed")
        if self._task.done():
            raise StorageError("the store writer stopped")

    async def _enqueue(self, item: Job | Callable[[Any], Any]) -> Any:
        self._check_open()
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
                self._busy = True
                try:
                    if isinstance(head, Job):
                        await self._commit_jobs(self._take_jobs())
                    else:
                        self._queue.popleft()
                        await self._run_exclusive(head, future)
                finally:
                    self._busy = False
        finally:
            # Only reached with work left if the task was cancelled: fail it, never hang it.
            while self._queue:
                fail(self._queue.popleft()[1], "the store writer stopped")

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
            results = await self._write_jobs([job for job, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                fail(future, "the store writer stopped")
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                fail(future, self._write_failed(result))
            elif not future.done():
                future.set_result(result)

    async def _write_jobs(self, jobs: list[Job]) -> list[bool | Exception]:
        """The batch in one transaction, or job by job if that fails for a job's own reason."""
        try:
            ok: list[bool | Exception] = list(await self._transaction(jobs))
        except Exception as exc:
            self._failed_batches += 1
            if len(jobs) == 1 or self._outcome_unknown(exc):
                return [exc] * len(jobs)
            return [await self._write_alone(job) for job in jobs]
        self._committed(len(jobs))
        return ok

    async def _write_alone(self, job: Job) -> bool | Exception:
        try:
            ok = (await self._transaction([job]))[0]
        except Exception as exc:
            self._failed_batches += 1
            return exc
        self._committed(1)
        return ok

    async def _run_exclusive(self, fn: Callable[[Any], Any], future: asyncio.Future[Any]) -> None:
        try:
            result = await self._exclusive(fn)
        except asyncio.CancelledError:
            fail(future, "the store writer stopped")
            raise
        except Exception as exc:
            self._failed_batches += 1
            fail(future, self._write_failed(exc))
            return
        self._commits += 1
        if not future.done():
            future.set_result(result)

    def _committed(self, jobs: int) -> None:
        """Count one committed transaction of `jobs` jobs."""
        self._commits += 1
        self._jobs += jobs

    def _write_failed(self, exc: Exception) -> str:
        """What a caller whose job failed with `exc` is told."""
        return f"write failed: {self._describe(exc)}"

    def _describe(self, exc: Exception) -> str:
        """The error as it may be shown to callers (a store strips secrets here)."""
        return str(exc)


def fail(future: asyncio.Future[Any], message: str) -> None:
    """Fail a caller's future with StorageError unless it is already settled."""
    if not future.done():
        future.set_exception(StorageError(message))
