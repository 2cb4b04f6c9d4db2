"""The PostgreSQL store: the audit trail, outcomes, ledger rows and config versions of a fleet.

Same public methods and guarantees as SqliteStore, so many sidecars can share one database:
writes go through one group-commit writer on a pooled connection and return only once
committed; reads take any connection from the pool. Every message that could carry the DSN's
password goes through the store's Redactor first.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg

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
from routing_sidecar.storage.batching import Job, Once, Write
from routing_sidecar.storage.postgres import admin, sql
from routing_sidecar.storage.postgres.dsn import Redactor
from routing_sidecar.storage.postgres.migrations import migrate
from routing_sidecar.storage.postgres.writer import LOST, PgWriter
from routing_sidecar.storage.rows import (
    DECISION_COLUMNS,
    GRADE_COLUMNS,
    LEDGER_COLUMNS,
    OUTCOME_COLUMNS,
    PERFORMANCE_COLUMNS,
    SELECTION_COLUMNS,
    assemble_stats,
    check_outcome,
    decision_from_row,
    ledger_entries,
    ledger_totals,
    outcome_from_row,
    params,
)

log = logging.getLogger(__name__)
DAY_S = 86_400.0
APPLICATION_NAME = "routing-sidecar"
CLOSE_TIMEOUT_S = 10.0
_LABELS = DECISION_COLUMNS.index("labels_json")


def _ledger_writes(rows: Sequence[LedgerEntry]) -> tuple[Write, ...]:
    return tuple(Write(sql.INSERT_LEDGER, params(r, LEDGER_COLUMNS)) for r in rows)


def _canonical_labels(text: str) -> str:
    """Labels as DecisionRecord wrote them: compact, sorted keys (jsonb spells `{"a": "1"}`)."""
    return json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False,
                      sort_keys=True)


def _decision(record: Sequence[Any]) -> DecisionRecord:
    row = list(record)
    row[_LABELS] = _canonical_labels(row[_LABELS])
    return decision_from_row(row)


class PostgresStore:
    """LedgerStore and AuditLog on one PostgreSQL database, shared by a fleet of sidecars."""

    def __init__(self, pool: asyncpg.Pool, writer: PgWriter, redact: Redactor,
                 retention_days: int, clock: Clock, acquire_timeout_s: float) -> None:
        self.where = redact.where
        self._pool = pool
        self.writer = writer
        self._redact = redact
        self._retention_s = retention_days * DAY_S
        self._clock = clock
        self._acquire_timeout_s = acquire_timeout_s
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, retention_days: int, clock: Clock, pool_size: int = 4,
                   connect_timeout_s: float = 5.0, command_timeout_s: float = 30.0,
                   max_batch: int = 512) -> PostgresStore:
        """Connect the pool, migrate under the advisory lock, and start the writer."""
        redact = Redactor(url)
        if pool_size < 2:
            raise ValueError("pool_size must be at least 2: one writer, one reader")
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=pool_size, timeout=connect_timeout_s,
                command_timeout=command_timeout_s,
                server_settings={"application_name": APPLICATION_NAME},
            )
        except (*LOST, asyncpg.PostgresError, ValueError) as exc:
            raise StorageError(f"{redact.where}: cannot connect: {redact(exc)}") from None
        try:
            async with pool.acquire(timeout=connect_timeout_s) as conn:
                applied = await migrate(conn)
        except StorageError as exc:
            await pool.close()
            raise StorageError(f"{redact.where}: {exc.message}") from None
        except (*LOST, asyncpg.PostgresError) as exc:
            pool.terminate()
            raise StorageError(f"{redact.where}: cannot migrate: {redact(exc)}") from None
        except BaseException:
            pool.terminate()
            raise
        if applied:
            log.info("store schema migrated", extra={"store": redact.where,
                                                     "versions": list(applied)})
        writer = PgWriter(pool, redact, max_batch=max_batch, acquire_timeout_s=connect_timeout_s,
                          keyed={**sql.KEYED, admin.UPSERT_PAUSE: 1})
        writer.start()
        return cls(pool, writer, redact, retention_days, clock, connect_timeout_s)

    async def close(self) -> None:
        """Commit everything queued, then close the pool; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.writer.close()
        finally:
            try:
                await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT_S)
            except (TimeoutError, *LOST):
                self._pool.terminate()

    # -- writes ----------------------------------------------------------------------------

    async def record_decision(self, row: DecisionRecord,
                              ledger_rows: Sequence[LedgerEntry] = ()) -> None:
        """Persist a decision and its reservation rows in one transaction; return once committed."""
        decision = Write(sql.INSERT_DECISION, params(row, DECISION_COLUMNS))
        await self.writer.submit(Job((decision, *_ledger_writes(ledger_rows))))

    async def record_outcome(self, decision_id: str, attempts: Sequence[AttemptRecord],
                             outcome: OutcomeRecord,
                             ledger_rows: Sequence[LedgerEntry] = (),
                             performance: Sequence[PerformanceRecord] = ()) -> bool:
        """Persist an outcome once; False (nothing written) when one is already recorded.

        The check runs inside the writer's transaction and the outcome's primary key backs it,
        so two concurrent reports of the same decision, on one sidecar or two, cannot both pass.
        """
        check_outcome(decision_id, attempts, outcome)
        writes = (
            Write(sql.INSERT_OUTCOME, params(outcome, OUTCOME_COLUMNS)),
            *(Write(sql.INSERT_SELECTION, params(a, SELECTION_COLUMNS)) for a in attempts),
            *_ledger_writes(ledger_rows),
            *(Write(sql.UPSERT_PERFORMANCE, params(p, PERFORMANCE_COLUMNS))
              for p in performance),
        )
        return await self.writer.submit(
            Job(writes, once=Once("decision_outcomes", "decision_id", decision_id))
        )

    async def record_grade(self, grade: GradeRecord,
                           performance: Sequence[PerformanceRecord] = ()) -> bool:
        """Persist a grade once; False (nothing written) when the decision is graded already."""
        writes = (
            Write(sql.INSERT_GRADE, params(grade, GRADE_COLUMNS)),
            Write(sql.COPY_GRADE, (grade.quality, grade.decision_id)),
            *(Write(sql.UPSERT_PERFORMANCE, params(p, PERFORMANCE_COLUMNS))
              for p in performance),
        )
        return await self.writer.submit(
            Job(writes, once=Once("decision_grades", "decision_id", grade.decision_id))
        )

    async def save_learned(self, book: str, state_json: str, at: float) -> None:
        """Replace the snapshot of one learned book (health, quality)."""
        await self.writer.submit(Job((Write(sql.UPSERT_LEARNED, (book, state_json, at)),)))

    async def load_learned(self, book: str) -> str | None:
        """The last snapshot of a learned book, or None."""
        rows = await self._rows(sql.LOAD_LEARNED, book)
        return str(rows[0][0]) if rows else None

    async def record_ledger(self, rows: Sequence[LedgerEntry]) -> None:
        """Persist ledger rows (expiry, release); return once committed."""
        if rows:
            await self.writer.submit(Job(_ledger_writes(rows)))

    async def record_config(self, config_hash: str, config_json: str, loaded_at: float) -> None:
        """Remember a config version; the first load time of a hash is kept."""
        write = Write(sql.INSERT_CONFIG, (config_hash, config_json, loaded_at))
        await self.writer.submit(Job((write,)))

    async def prune(self, older_than: float | None = None, *, chunk: int = 1000) -> int:
        """Delete decisions (with attempts and outcomes) decided before `older_than`.

        Defaults to now minus the retention. Works in chunks of `chunk` decisions, each its own
        transaction, so decisions keep committing in between. Also drops the ledger rows of
        closed reservations in periods that ended before the cutoff; open periods keep theirs.
        """
        cutoff = self._clock.now() - self._retention_s if older_than is None else older_than

        async def one_chunk(conn: asyncpg.Connection) -> int:
            status = await conn.execute(sql.PRUNE_DECISIONS, cutoff, chunk)
            return int(status.rsplit(" ", 1)[-1])  # "DELETE n"

        async def ledger(conn: asyncpg.Connection) -> None:
            await conn.execute(sql.PRUNE_LEDGER, cutoff)

        total = 0
        while True:
            deleted = await self.writer.run(one_chunk)
            total += deleted
            if deleted < chunk:
                break
        await self.writer.run(ledger)
        return total

    # -- reads -----------------------------------------------------------------------------

    async def _rows(self, query: str, *args: object) -> list[Any]:
        # A read changes nothing, so one whose pooled connection the server had closed (a
        # restart, an idle timeout) is simply run again on the fresh one the pool opens.
        for attempt in (1, 2):
            try:
                async with self._pool.acquire(timeout=self._acquire_timeout_s) as conn:
                    return list(await conn.fetch(query, *args))
            except LOST as exc:
                if attempt == 2:
                    raise StorageError(f"read failed: {self._redact(exc)}") from None
            except asyncpg.PostgresError as exc:
                raise StorageError(f"read failed: {self._redact(exc)}") from None
        raise AssertionError("unreachable")

    async def get_decision(self, decision_id: str) -> DecisionRecord | None:
        """A recorded decision, or None."""
        rows = await self._rows(sql.GET_DECISION, decision_id)
        return _decision(rows[0]) if rows else None

    async def get_outcome(self, decision_id: str) -> OutcomeRecord | None:
        """The outcome recorded for a decision, or None."""
        rows = await self._rows(sql.GET_OUTCOME, decision_id)
        return outcome_from_row(rows[0]) if rows else None

    async def get_attempts(self, decision_id: str) -> list[AttemptRecord]:
        """The attempts recorded for a decision, in attempt order."""
        return [queries.attempt_from_row(r) for r in await self._rows(sql.GET_ATTEMPTS,
                                                                      decision_id)]

    async def load_ledger_entries(self) -> list[LedgerEntry]:
        """Every persisted ledger row, in the order written."""
        return ledger_entries(await self._rows(sql.LOAD_LEDGER))

    async def ledger_totals(self) -> list[LedgerTotal]:
        """Sums of persisted rows per scope, period, period start and kind."""
        return ledger_totals(await self._rows(sql.LEDGER_TOTALS))

    async def routing_stats(self, since: float, label_keys: Sequence[str] = ()) -> RoutingStats:
        """The routing matrix over non-dry-run decisions made since a time."""
        keys = list(dict.fromkeys(label_keys))
        by_label = await self._rows(sql.STATS_BY_MODEL_LABEL, since, keys) if keys else []
        return assemble_stats(
            since, await self._rows(sql.STATS_BY_MODEL_TASK, since), by_label,
            await self._rows(sql.STATS_DECISIONS_BY_PROVIDER, since),
            await self._rows(sql.STATS_ATTEMPTS_BY_PROVIDER, since),
        )

    # -- the admin API (postgres/admin.py) -------------------------------------------------

    async def _audited(self, found: Sequence[Any]) -> list[AuditedDecision]:
        records = [_decision(r) for r in found]
        if not records:
            return []
        ids = [r.decision_id for r in records]
        return queries.audited(records, await self._rows(admin.OUTCOMES_OF, ids),
                               await self._rows(admin.ATTEMPTS_OF, ids))

    async def list_decisions(self, limit: int, model: str | None = None,
                             task_type: str | None = None) -> list[AuditedDecision]:
        """The most recent decisions, newest first, with outcomes and attempts."""
        return await self._audited(
            await self._rows(admin.LIST_DECISIONS, model, task_type, limit))

    async def decision_view(self, decision_id: str) -> AuditedDecision | None:
        """One decision with its outcome and attempts, or None."""
        views = await self._audited(await self._rows(admin.GET_DECISION, decision_id))
        return views[0] if views else None

    async def fallback_cells(self, since: float, label_key: str | None) -> list[FallbackCell]:
        """Fallback decisions per (model, task type), or per (model, label value)."""
        if label_key is None:
            return queries.fallback_cells_from(
                await self._rows(admin.FALLBACKS_BY_TASK, since))
        return queries.fallback_cells_from(
            await self._rows(admin.FALLBACKS_BY_LABEL, since, label_key))

    async def label_keys(self, since: float) -> list[str]:
        """Label keys of the decisions made since a time, sorted."""
        return [str(r[0]) for r in await self._rows(admin.LABEL_KEYS, since)]

    async def activity(self, since: float, bucket_s: float) -> list[ActivityBucket]:
        """Decisions and spend per bucket since a time (buckets with neither are absent)."""
        queries.check_bucket(bucket_s)
        return queries.buckets_from(
            await self._rows(admin.DECISIONS_PER_BUCKET, bucket_s, since),
            await self._rows(admin.SPEND_PER_BUCKET, bucket_s, since), bucket_s)

    async def record_policy_change(self, change: PolicyChange, config_json: str) -> int:
        """Persist a policy edit and the config version it produced; return its version."""

        async def write(conn: asyncpg.Connection) -> int:
            await conn.execute(admin.INSERT_CONFIG_VERSION, change.config_hash, config_json,
                               change.changed_at)
            version = await conn.fetchval(
                admin.INSERT_POLICY_CHANGE, change.policy, change.action, change.policy_json,
                change.config_hash, change.changed_at)
            return int(version)

        return await self.writer.run(write)

    async def policy_changes(self) -> list[PolicyChange]:
        """Every policy edit, oldest first."""
        return [PolicyChange(r[0], r[1], r[2], r[3], r[4], int(r[5]))
                for r in await self._rows(admin.POLICY_CHANGES)]

    async def set_pause(self, pause: PauseRecord) -> None:
        """Persist a model's pause (replacing an earlier one)."""
        write = Write(admin.UPSERT_PAUSE, (pause.model, pause.paused_at, pause.reason))
        await self.writer.submit(Job((write,)))

    async def clear_pause(self, model: str) -> None:
        """Forget a model's pause."""
        await self.writer.submit(Job((Write(admin.DELETE_PAUSE, (model,)),)))

    async def load_pauses(self) -> list[PauseRecord]:
        """Every paused model."""
        return [PauseRecord(*r) for r in await self._rows(admin.PAUSES)]
