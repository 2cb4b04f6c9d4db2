"""The embedded SQLite store (WAL): audit log, outcomes, budget ledger rows, config versions.

Writes go through one GroupWriter on a dedicated connection and return only once committed;
reads use a second, read-only connection, which WAL lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from routing_sidecar.core.budget_rules import LedgerEntry
from routing_sidecar.errors import StorageError
from routing_sidecar.ports import (
    ActivityBucket,
    AuditedDecision,
    Clock,
    FallbackCell,
    PauseRecord,
    PolicyChange,
)
from routing_sidecar.records import (
    AttemptRecord,
    DecisionRecord,
    GradeRecord,
    LedgerTotal,
    OutcomeRecord,
    PerformanceRecord,
    RoutingStats,
)
from routing_sidecar.storage import queries
from routing_sidecar.storage.migrations import migrate
from routing_sidecar.storage.rows import (
    DECISION_COLUMNS,
    GRADE_COLUMNS,
    LEDGER_COLUMNS,
    OUTCOME_COLUMNS,
    PERFORMANCE_COLUMNS,
    SELECTION_COLUMNS,
    check_outcome,
    decision_from_row,
    insert,
    ledger_entries,
    ledger_totals,
    outcome_from_row,
    params,
    qmarks,
    upsert_performance,
)
from routing_sidecar.storage.stats import routing_stats
from routing_sidecar.storage.writer import GroupWriter, Job, Once, Write
from routing_sidecar.waiting import stop_task

Synchronous = Literal["NORMAL", "FULL"]
MIN_SQLITE = (3, 38)  # STRICT tables (3.37) and built-in JSON functions (3.38)
DAY_S = 86_400.0


log = logging.getLogger(__name__)
# The WAL holds what was committed since the last checkpoint: at a thousand small commits a
# second, each rewriting a few pages, a second's worth is tens of MiB, so checkpoint often.
CHECKPOINT_EVERY_S = 0.2
BACKSTOP_CHECKPOINT_PAGES = 12_000  # about 47 MiB of WAL at the default 4 KiB page
# Once a checkpoint has let the WAL start over, a file grown past this is cut back to it.
WAL_SIZE_LIMIT_BYTES = 16 * 1024 * 1024

# Record fields are named after their columns (rows.py); only the placeholders are SQLite's.
INSERT_DECISION = insert("model_routing_decisions", DECISION_COLUMNS, qmarks)
INSERT_SELECTION = insert("model_selections", SELECTION_COLUMNS, qmarks)
INSERT_OUTCOME = insert("decision_outcomes", OUTCOME_COLUMNS, qmarks)
INSERT_LEDGER = insert("budget_ledger", LEDGER_COLUMNS, qmarks)
INSERT_CONFIG = insert("routing_policies", ("config_hash", "config_json", "loaded_at"), qmarks,
                       " ON CONFLICT (config_hash) DO NOTHING")
UPSERT_PERFORMANCE = upsert_performance(qmarks)
INSERT_GRADE = insert("decision_grades", GRADE_COLUMNS, qmarks)
COPY_GRADE = "UPDATE decision_outcomes SET quality = ? WHERE decision_id = ? AND quality IS NULL"
UPSERT_LEARNED = (
    "INSERT INTO learned_state (book, state_json, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (book) DO UPDATE SET state_json = excluded.state_json, "
    "updated_at = excluded.updated_at"
)


def _ledger_writes(rows: Sequence[LedgerEntry]) -> tuple[Write, ...]:
    return tuple(Write(INSERT_LEDGER, params(r, LEDGER_COLUMNS)) for r in rows)


async def _connect(path: str, busy_timeout_ms: int) -> aiosqlite.Connection:
    """A connection for migrations and reads; the writer has its own (see _writer_conn)."""
    # isolation_level=None: transactions are begun and committed explicitly.
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        rows = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
        if str(rows[0][0]).lower() != "wal":
            raise StorageError(f"{path}: cannot switch to WAL (journal_mode={rows[0][0]})")
        await conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        await conn.close()
        raise
    return conn


def _writer_conn(path: str, synchronous: Synchronous, busy_timeout_ms: int) -> sqlite3.Connection:
    """The write connection, opened and then used only on the writer's thread."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        # NORMAL in WAL mode fsyncs at checkpoints, not at every commit. A committed
        # transaction's WAL frames have been write()n, so they sit in the OS page cache and
        # survive kill -9 of this process; only an OS crash or power loss can drop the last
        # commits. FULL also fsyncs the WAL on every commit to survive power loss, at a
        # latency cost that group commit spreads over the batch.
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        # Checkpoints run on their own connection (Checkpointer), so no commit pays for
        # copying the WAL back; this high mark is only a backstop should that ever stall.
        conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_CHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
    except BaseException:
        conn.close()
        raise
    return conn


class Checkpointer:
    """Copies the WAL back into the database five times a second, beside the writer.

    PASSIVE checkpoints neither wait for nor block the writer; without them the commit that
    crosses SQLite's auto-checkpoint mark would stall for milliseconds. Each round tells the
    writer how the WAL stands (`GroupWriter.wal_checked`).
    """

    def __init__(self, conn: aiosqlite.Connection, interval_s: float,
                 writer: GroupWriter) -> None:
        self._conn = conn
        self._interval_s = interval_s
        self._writer = writer
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sqlite-ckpt")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self._round()

    async def _round(self) -> None:
        # From before the checkpoint starts until its numbers are in, commits run beside the
        # loop: one of them could be the first after a whole WAL was copied back.
        self._writer.checkpoint_started()
        found: tuple[bool, int, int] | None = None
        try:
            rows = await self._conn.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
            busy, frames, copied = next(iter(rows), (1, 0, 0))
            found = (bool(busy), frames, copied)
        except sqlite3.Error:
            log.warning("WAL checkpoint failed; the next round retries", exc_info=True)
        finally:
            self._writer.wal_checked(found)

    async def close(self) -> None:
        """Stop checkpointing and close the connection."""
        await stop_task(self._task)
        await self._conn.close()


def _take_ownership(path: str) -> int:
    """Lock `path`.lock for this process's lifetime; StorageError if another store holds it.

    One sidecar per file: each keeps its budget totals in memory, so two on one file would
    each spend the whole budget. The lock goes with the process, kill -9 included.
    """
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(
            f"{path}: in use by another sidecar (one sidecar per SQLite file; several share "
            "a PostgreSQL store, store.url)") from None
    except OSError:
        os.close(fd)
        raise
    return fd


class SqliteStore:
    """LedgerStore and AuditLog on one SQLite file."""

    def __init__(self, path: str, read: aiosqlite.Connection, writer: GroupWriter,
                 checkpointer: Checkpointer, retention_days: int, clock: Clock) -> None:
        self.path = path
        self._read = read
        self._checkpointer = checkpointer
        self.writer = writer
        self._retention_s = retention_days * DAY_S
        self._clock = clock
        self._closed = False
        self._lock_fd: int | None = None  # the file's ownership lock (see _take_ownership)

    @classmethod
    async def open(cls, path: str, *, retention_days: int, clock: Clock,
                   synchronous: Synchronous = "NORMAL", busy_timeout_ms: int = 5000,
                   max_batch: int = 512, owned: bool = True) -> SqliteStore:
        """Open (creating if needed) and migrate the file, and start the group-commit writer.

        `owned`: this process alone may use the file (the audit store and its budget rows);
        False for a file several processes may share, such as a local response cache.
        """
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StorageError(f"SQLite {sqlite3.sqlite_version} is too old; need 3.38 or later")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            lock_fd = _take_ownership(path) if owned else None
        except OSError as exc:
            raise StorageError(f"{path}: cannot open the store: {exc}") from exc
        try:
            store = await cls._open_owned(path, retention_days, clock, synchronous,
                                          busy_timeout_ms, max_batch, owned=owned)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        store._lock_fd = lock_fd
        return store

    @classmethod
    async def _open_owned(cls, path: str, retention_days: int, clock: Clock,
                          synchronous: Synchronous, busy_timeout_ms: int,
                          max_batch: int, *, owned: bool) -> SqliteStore:
        try:
            read = await _connect(path, busy_timeout_ms)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"{path}: cannot open the store: {exc}") from exc
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        loop = asyncio.get_running_loop()
        try:
            await migrate(read)
            await read.execute("PRAGMA query_only = ON")
            write = await loop.run_in_executor(
                executor, _writer_conn, path, synchronous, busy_timeout_ms
            )
        except sqlite3.Error as exc:
            await read.close()
            executor.shutdown()
            raise StorageError(f"{path}: cannot prepare the store: {exc}") from exc
        except BaseException:
            await read.close()
            executor.shutdown()
            raise
        # Small batches, and a burst's, commit on the loop (see writer.py) unless other
        # processes write the file too (a lock one of them holds would stop the loop for as
        # long as busy_timeout) or every commit fsyncs (FULL: the loop would wait on the disk).
        writer = GroupWriter(write, executor, max_batch=max_batch,
                             inline=synchronous == "NORMAL" and owned,
                             wal_backstop=BACKSTOP_CHECKPOINT_PAGES)
        writer.start()
        checkpointer = Checkpointer(await _connect(path, busy_timeout_ms), CHECKPOINT_EVERY_S,
                                    writer)
        return cls(path, read, writer, checkpointer, retention_days, clock)

    async def close(self) -> None:
        """Commit everything queued, then close both connections; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._checkpointer.close()
            await self.writer.close()
        finally:
            await self._read.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = None

    # -- writes ----------------------------------------------------------------------------

    async def record_decision(self, row: DecisionRecord,
                              ledger_rows: Sequence[LedgerEntry] = ()) -> None:
        """Persist a decision with its reservation rows; return once committed."""
        decision = Write(INSERT_DECISION, params(row, DECISION_COLUMNS))
        await self.writer.submit(Job((decision, *_ledger_writes(ledger_rows))))

    async def record_outcome(self, decision_id: str, attempts: Sequence[AttemptRecord],
                             outcome: OutcomeRecord,
                             ledger_rows: Sequence[LedgerEntry] = (),
                             performance: Sequence[PerformanceRecord] = ()) -> bool:
        """Persist an outcome once; False (nothing written) when one is already recorded.

        The check runs inside the writer's transaction, so two concurrent reports of the same
        decision cannot both pass it.
        """
        check_outcome(decision_id, attempts, outcome)
        writes = (
            Write(INSERT_OUTCOME, params(outcome, OUTCOME_COLUMNS)),
            *(Write(INSERT_SELECTION, params(a, SELECTION_COLUMNS)) for a in attempts),
            *_ledger_writes(ledger_rows),
            *(Write(UPSERT_PERFORMANCE, params(p, PERFORMANCE_COLUMNS)) for p in performance),
        )
        return await self.writer.submit(
            Job(writes, once=Once("decision_outcomes", "decision_id", decision_id))
        )

    async def record_grade(self, grade: GradeRecord,
                           performance: Sequence[PerformanceRecord] = ()) -> bool:
        """Persist a grade once; False (nothing written) when the decision is graded already."""
        writes = (
            Write(INSERT_GRADE, params(grade, GRADE_COLUMNS)),
            Write(COPY_GRADE, (grade.quality, grade.decision_id)),
            *(Write(UPSERT_PERFORMANCE, params(p, PERFORMANCE_COLUMNS)) for p in performance),
        )
        return await self.writer.submit(
            Job(writes, once=Once("decision_grades", "decision_id", grade.decision_id))
        )

    async def save_learned(self, book: str, state_json: str, at: float) -> None:
        """Replace the snapshot of one learned book (health, quality)."""
        await self.writer.submit(Job((Write(UPSERT_LEARNED, (book, state_json, at)),)))

    async def load_learned(self, book: str) -> str | None:
        """The last snapshot of a learned book, or None."""
        rows = await self._rows("SELECT state_json FROM learned_state WHERE book = ?", (book,))
        return str(rows[0][0]) if rows else None

    async def record_ledger(self, rows: Sequence[LedgerEntry]) -> None:
        """Persist ledger rows (expiry, release); return once committed."""
        if rows:
            await self.writer.submit(Job(_ledger_writes(rows)))

    async def record_config(self, config_hash: str, config_json: str, loaded_at: float) -> None:
        """Remember a config version; the first load time of a hash is kept."""
        write = Write(INSERT_CONFIG, (config_hash, config_json, loaded_at))
        await self.writer.submit(Job((write,)))

    async def prune(self, older_than: float | None = None, *, chunk: int = 1000) -> int:
        """Delete decisions (with attempts and outcomes) decided before `older_than`.

        Defaults to now minus the retention. Works in chunks of `chunk` decisions, each its own
        transaction, so decisions keep committing in between. Also drops the ledger rows of
        closed reservations in periods that ended before the cutoff; open periods keep theirs.
        """
        cutoff = self._clock.now() - self._retention_s if older_than is None else older_than
        total = 0
        while True:
            deleted = await self.writer.run(partial(_prune_decisions, cutoff=cutoff, limit=chunk))
            total += deleted
            if deleted < chunk:
                break
        await self.writer.run(partial(_prune_ledger, cutoff=cutoff))
        return total

    # -- reads -----------------------------------------------------------------------------

    async def _rows(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        try:
            return list(await self._read.execute_fetchall(sql, tuple(params)))
        except sqlite3.Error as exc:
            raise StorageError(f"read failed: {exc}") from exc

    async def get_decision(self, decision_id: str) -> DecisionRecord | None:
        """A recorded decision, or None."""
        rows = await self._rows(
            f"SELECT {', '.join(DECISION_COLUMNS)} FROM model_routing_decisions "
            "WHERE decision_id = ?", (decision_id,))
        return decision_from_row(rows[0]) if rows else None

    async def get_outcome(self, decision_id: str) -> OutcomeRecord | None:
        """The outcome recorded for a decision, or None."""
        rows = await self._rows(
            f"SELECT {', '.join(OUTCOME_COLUMNS)} FROM decision_outcomes WHERE decision_id = ?",
            (decision_id,))
        return outcome_from_row(rows[0]) if rows else None

    async def get_attempts(self, decision_id: str) -> list[AttemptRecord]:
        """The attempts recorded for a decision, in attempt order."""
        rows = await self._rows(
            f"SELECT {', '.join(SELECTION_COLUMNS)} FROM model_selections "
            "WHERE decision_id = ? ORDER BY attempt_index", (decision_id,))
        return [queries.attempt_from_row(r) for r in rows]

    async def load_ledger_entries(self) -> list[LedgerEntry]:
        """Every persisted ledger row, in the order written."""
        rows = await self._rows(
            f"SELECT {', '.join(LEDGER_COLUMNS)} FROM budget_ledger ORDER BY id")
        return ledger_entries(rows)

    async def ledger_totals(self) -> list[LedgerTotal]:
        """Sums of persisted rows per scope, period, period start and kind."""
        rows = await self._rows(
            "SELECT scope, period, period_start, kind, SUM(amount_micros) FROM budget_ledger "
            "GROUP BY scope, period, period_start, kind ORDER BY scope, period, period_start, kind")
        return ledger_totals(rows)

    async def routing_stats(self, since: float, label_keys: Sequence[str] = ()) -> RoutingStats:
        """The routing matrix over non-dry-run decisions made since a time."""
        return await routing_stats(self._rows, since, label_keys)

    # -- the admin API (storage/queries.py) ------------------------------------------------

    async def list_decisions(self, limit: int, model: str | None = None,
                             task_type: str | None = None) -> list[AuditedDecision]:
        """The most recent decisions, newest first, with outcomes and attempts."""
        return await queries.list_decisions(self._rows, limit, model, task_type)

    async def decision_view(self, decision_id: str) -> AuditedDecision | None:
        """One decision with its outcome and attempts, or None."""
        return await queries.decision_view(self._rows, decision_id)

    async def fallback_cells(self, since: float, label_key: str | None) -> list[FallbackCell]:
        """Fallback decisions per (model, task type), or per (model, label value)."""
        return await queries.fallback_cells(self._rows, since, label_key)

    async def label_keys(self, since: float) -> list[str]:
        """Label keys of the decisions made since a time, sorted."""
        return await queries.label_keys(self._rows, since)

    async def activity(self, since: float, bucket_s: float) -> list[ActivityBucket]:
        """Decisions and spend per bucket since a time (buckets with neither are absent)."""
        return await queries.activity(self._rows, since, bucket_s)

    async def record_policy_change(self, change: PolicyChange, config_json: str) -> int:
        """Persist a policy edit and the config version it produced; return its version."""
        version: int = await self.writer.run(queries.record_policy_change(change, config_json))
        return version

    async def policy_changes(self) -> list[PolicyChange]:
        """Every policy edit, oldest first."""
        return await queries.policy_changes(self._rows)

    async def set_pause(self, pause: PauseRecord) -> None:
        """Persist a model's pause (replacing an earlier one)."""
        await self.writer.submit(Job((queries.pause_write(pause),)))

    async def clear_pause(self, model: str) -> None:
        """Forget a model's pause."""
        await self.writer.submit(Job((queries.unpause_write(model),)))

    async def load_pauses(self) -> list[PauseRecord]:
        """Every paused model."""
        return await queries.load_pauses(self._rows)


def _prune_decisions(conn: sqlite3.Connection, *, cutoff: float, limit: int) -> int:
    rows = conn.execute(
        "SELECT decision_id FROM model_routing_decisions WHERE decided_at < ? "
        "ORDER BY decided_at LIMIT ?", (cutoff, limit)).fetchall()
    keys = [(r[0],) for r in rows]
    for table in ("model_selections", "decision_outcomes", "decision_grades",
                  "model_routing_decisions"):
        conn.executemany(f"DELETE FROM {table} WHERE decision_id = ?", keys)
    return len(keys)


def _prune_ledger(conn: sqlite3.Connection, *, cutoff: float) -> int:
    # Only reservations already closed (released, expired or settled) lose rows, so a restore
    # never sees a closing row without the reserve row it closes.
    cursor = conn.execute(
        "DELETE FROM budget_ledger WHERE period_end <= ? AND reservation_id IN "
        "(SELECT reservation_id FROM budget_ledger WHERE kind <> 'reserve')", (cutoff,))
    return int(cursor.rowcount)
