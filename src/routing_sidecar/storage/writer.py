"""The SQLite group-commit writer: the shared batching loop over a stdlib sqlite3 connection.

The whole transaction of a batch is one call on the writer's own thread (a stdlib sqlite3
connection behind a one-thread executor), with one `executemany` per distinct statement: a
thread hop per statement, as aiosqlite would make, cost more than the statements themselves.
A batch of one or two jobs (a quiet sidecar) commits on the event loop instead: the hop there
and back costs more than such a commit (WAL, no fsync per commit), and the loop has nothing
else to do meanwhile; under load batches grow (jobs arrive while the thread commits) and go
to the thread, beside the loop. A job that would be a batch of one by itself (nothing queued
or committing, nothing else ready on the loop) does not even wait for the writer task: it
commits in its caller (`submit`).

A burst (`COMMITS_IN_BURSTS`, a RouteStream's group of decisions) is a batch its caller made:
the thread has nothing to grow for it, and there every row's statement hands the interpreter
lock back and must wait to take it again while the loop runs Python. Measured on a stream
kept 64 messages ahead: in the thread its batches (about 19 jobs) took 5 ms each, mostly
waiting, some 260 µs a decision; on the loop (batches of about 3) 120 µs each, 36 µs a
decision. So a writer told `inline` (no fsync per commit: a commit is then CPU work under
that lock anyway) commits any batch holding a burst's job on the loop.
A file other processes write too, or one whose every commit fsyncs (`synchronous="FULL"`),
commits every batch in the thread (`inline` off): its BEGIN may wait for another process's
lock for as long as busy_timeout, its COMMIT on the disk.
The first commit after a checkpoint has copied the whole WAL back starts the WAL over, and
SQLite fsyncs its new header then, whatever `synchronous` says; and the commit that takes the
WAL past its backstop (`wal_backstop`) runs SQLite's own checkpoint before it returns: WAL
reads, database writes and two fsyncs. The checkpointer says when a round starts and what it
found (`checkpoint_started`, `wal_checked`): every commit while a round runs, the first after
one copied the WAL back whole, and every commit while the WAL is near the backstop run in
the thread, so the loop never waits on a disk flush. BEGIN IMMEDIATE takes
the file's write lock up front, so the `Once` check inside the transaction cannot race
another writer. See batching.py for the commit and retry rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from routing_sidecar import domain
from routing_sidecar.core.budget_rules import EntryKind
from routing_sidecar.errors import StorageError
from routing_sidecar.ports import COMMITS_IN_BURSTS
from routing_sidecar.storage.batching import (
    BatchWriter,
    Job,
    Once,
    Taken,
    Write,
    accepted,
    grouped,
    once_keys,
)

__all__ = ["GroupWriter", "Job", "Once", "Write"]

T = TypeVar("T")

# sqlite3 looks for an adapter for every parameter that is not exactly an int, float, str,
# bytes or None, and a lookup that finds none (a bool, a StrEnum) costs about 0.5 µs per
# value, measured: a quarter of an audit row's binding. Registered, they bind as before (a
# bool as 0 or 1, a StrEnum member as its text) at a dict lookup each.
for _kind in (domain.Objective, domain.DecisionStatus, domain.ReasonCode, domain.Rejection,
              domain.AttemptStatus, domain.BudgetPeriod, domain.BudgetState, EntryKind):
    sqlite3.register_adapter(_kind, str)
sqlite3.register_adapter(bool, int)
# Batches up to this many jobs commit on the event loop itself (see _transaction).
INLINE_JOBS = 2


class GroupWriter(BatchWriter):
    """Owns the SQLite write connection; batches jobs into shared transactions."""

    def __init__(
        self, conn: sqlite3.Connection, executor: ThreadPoolExecutor, *, max_batch: int = 512,
        inline: bool = True, wal_backstop: int = 0,
    ) -> None:
        super().__init__(max_batch=max_batch, name="sqlite-writer")
        self._conn = conn
        self._executor = executor
        # Small batches and bursts may commit on the loop. False for a file other processes
        # write too (BEGIN IMMEDIATE may then wait for their lock, up to busy_timeout) or
        # when every commit fsyncs: such waits belong beside the loop, not on it.
        self._inline = inline
        self._bursts = 0  # jobs of bursts queued or committing (see the module docstring)
        self._restart_due = False  # the next commit starts the WAL over (an fsync)
        self._checkpointing = False  # a checkpoint round is running: it may copy the WAL whole
        # Frames past which a commit runs SQLite's own checkpoint (0: none), and whether the
        # WAL was near that at the last checkpoint round.
        self._backstop = wal_backstop
        self._near_backstop = False

    def checkpoint_started(self) -> None:
        """A checkpoint round starts: until it reports, commits run in the thread."""
        self._checkpointing = True

    def wal_checked(self, found: tuple[bool, int, int] | None) -> None:
        """What the round found (wal_checkpoint's busy, frames, copied; None if it failed).

        Copied back whole, the next commit restarts the WAL; within a quarter of the backstop,
        a commit may cross it. Either runs in the thread (see the module docstring).
        """
        self._checkpointing = False
        if found is None:
            return
        busy, frames, copied = found
        if not busy and 0 < frames == copied:
            self._restart_due = True
        self._near_backstop = self._backstop > 0 and frames * 4 >= self._backstop * 3

    def _beside_loop(self) -> bool:
        """True when the next commit may wait on a lock or the disk (see the module docstring)."""
        return (not self._inline or self._restart_due or self._checkpointing
                or self._near_backstop)

    async def submit(self, job: Job) -> bool:
        """Queue a job; return after its batch commits: True, or False if `once` skipped it.

        When nothing is queued or committing and the loop has nothing else ready to run, the
        job commits here and now: the batch the writer task would take next turn is this job
        alone, so the hop there and back (two loop turns, an event, a future) buys nothing.
        Not for a caller that commits in bursts (`COMMITS_IN_BURSTS`): in the turn it waits,
        the rest of its burst comes to share the transaction.
        """
        if COMMITS_IN_BURSTS.get():
            if not self._inline:
                return await super().submit(job)
            self._bursts += 1
            try:
                return await super().submit(job)
            finally:
                self._bursts -= 1
        if self._beside_loop() or not self._idle() or _others_ready():
            return await super().submit(job)
        self._check_open()
        try:
            ran = self._write_batch([job])
        except Exception as exc:  # as a batch of one fails: the store's own message
            self._failed_batches += 1
            raise StorageError(self._write_failed(exc)) from None
        self._committed(1)
        return ran[0]

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` alone, on the writer thread, in its own transaction; return its result."""
        result: T = await self._enqueue(fn)
        return result

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _transaction(self, jobs: list[Job]) -> list[bool]:
        if self._beside_loop():
            self._restart_due = False
            return await self._in_thread(self._write_batch, jobs)
        if len(jobs) <= INLINE_JOBS or self._bursts:
            # A batch this small commits in well under a millisecond (WAL, no fsync per
            # commit): on the loop it costs less than the hop to the writer thread and back.
            # A burst's batch is cheaper on the loop at any size (see the module docstring).
            return self._write_batch(jobs)
        return await self._in_thread(self._write_batch, jobs)

    async def _exclusive(self, fn: Callable[[Any], Any]) -> Any:
        return await self._in_thread(self._exclusive_in_thread, fn)

    async def _close_connection(self) -> None:
        await self._in_thread(self._conn.close)
        self._executor.shutdown(wait=True)

    def _write_batch(self, jobs: list[Job]) -> list[bool]:
        """One transaction for the whole batch, on the writer thread or the loop."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            accept = accepted(jobs, self._taken(jobs))
            for sql, rows in grouped(jobs, accept).items():
                conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return accept

    def _taken(self, jobs: list[Job]) -> Taken:
        """The batch's `Once` keys already stored."""
        taken: Taken = set()
        for (table, column), keys in once_keys(jobs).items():
            marks = ",".join("?" * len(keys))
            rows = self._conn.execute(
                f"SELECT {column} FROM {table} WHERE {column} IN ({marks})", tuple(keys)
            ).fetchall()
            taken.update((table, column, row[0]) for row in rows)
        return taken

    def _exclusive_in_thread(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """On the writer thread: `fn` in a transaction of its own."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self._conn)
            self._conn.execute("COMMIT")
        except BaseException:
            _rollback(self._conn)
            raise
        return result


def _others_ready() -> bool:
    """False only when the running loop is known to have no other callback ready this turn.

    asyncio's loop keeps them in `_ready`; a loop without it (uvloop) always gets True, which
    sends every job through the writer task as before.
    """
    ready = getattr(asyncio.get_running_loop(), "_ready", None)
    return ready is None or len(ready) > 0


def _rollback(conn: sqlite3.Connection) -> None:
    # The batch already failed; its error is the one worth reporting, not the rollback's.
    with contextlib.suppress(Exception):
        conn.rollback()
